export * from "./types.js";
export * from "./errors.js";
export * from "./backoff.js";
export { decodeJwtExp, isJwtExpired } from "./jwt.js";
export { createPidGenerator } from "./pid.js";
export * from "./client.js";
export * from "./presence.js";
export * from "./helpers.js";

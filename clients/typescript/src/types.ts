/**
 * Wire types of the customws protocol, exactly as the gateway speaks them
 * (spec: gateway.md sections 3 to 5). Everything here is plain data: the
 * envelopes are JSON text frames.
 */

/** The subprotocol the gateway selects; the token travels beside it as `bearer.<jwt>`. */
export const SUBPROTOCOL = "customws.v1";
/** Prefix of the subprotocol entry that carries the JWT. */
export const BEARER_SUBPROTOCOL_PREFIX = "bearer.";

/** Message types a client sends. */
export const ClientMessageType = {
  DataRequest: "data_request",
  PresenceUpdate: "presence_update",
  ClientAck: "client_ack",
  GenericRequest: "generic_request",
  GenericResponse: "generic_response",
} as const;
export type ClientMessageType = (typeof ClientMessageType)[keyof typeof ClientMessageType];

/** Message types the server sends. */
export const ServerMessageType = {
  DataEvent: "data_event",
  PresenceEvent: "presence_event",
  ServerAck: "server_ack",
  GenericResponse: "generic_response",
  GenericRequest: "generic_request",
  ErrorNotification: "error_notification",
} as const;
export type ServerMessageType = (typeof ServerMessageType)[keyof typeof ServerMessageType];

/** WebSocket close codes the gateway uses (gateway.md section 6), plus the standard ones. */
export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  ProtocolError: 1002,
  UnsupportedData: 1003,
  NoStatus: 1005,
  Abnormal: 1006,
  PolicyViolation: 1008,
  MessageTooBig: 1009,
  InternalError: 1011,
  TryAgainLater: 1013,
  /** The user opened a newer connection past the per-user limit; this one was replaced. */
  Replaced: 4000,
  /** The JWT's `exp` passed on an open connection and no `refresh_token` came first. */
  TokenExpired: 4001,
} as const;
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

/** HTTP-like error codes carried in `error_notification` (gateway.md section 4). */
export const ErrorCode = {
  Malformed: 400,
  Unauthenticated: 401,
  Forbidden: 403,
  TargetNotConnected: 404,
  Timeout: 408,
  TooLarge: 413,
  InvalidPayload: 422,
  RateLimited: 429,
  Internal: 500,
  UnsupportedAction: 501,
  Overloaded: 503,
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Any JSON object. */
export type JsonObject = { [key: string]: unknown };

// ---------------------------------------------------------------- client → server

/** Recommended shape of a `data_request` payload (free-form beyond these keys). */
export interface DataRequestPayload extends JsonObject {
  action?: string;
  resource?: string;
  data?: JsonObject;
}

/** `presence_update` payload. */
export interface PresenceUpdatePayload extends JsonObject {
  status: string;
  context?: JsonObject;
}

/** `client_ack` payload: completes a server message that asked for an ack. */
export interface ClientAckPayload extends JsonObject {
  acknowledgedPid: string;
  status?: string;
  error?: string;
}

/** `generic_request` payload (both directions). */
export interface GenericRequestPayload extends JsonObject {
  action: string;
  resource?: string;
  data?: JsonObject;
}

/** Client → server envelope. */
export interface ClientToServerMessage<P = unknown> {
  pid?: string;
  type: ClientMessageType;
  targetUserId?: number;
  payload: P;
}

export interface DataRequestMessage extends ClientToServerMessage<DataRequestPayload | JsonObject> {
  type: "data_request";
}

// ---------------------------------------------------------------- server → client

/** The `error` member of a server envelope. */
export interface ErrorPayload {
  originalPid?: string;
  code: number;
  message: string;
}

/** Server → client envelope. */
export interface ServerToClientMessage<P = unknown> {
  pid?: string;
  type: ServerMessageType | (string & {});
  fromUserId?: number;
  payload?: P;
  error?: ErrorPayload;
}

/** Fields the gateway sets on every `data_event` payload (overriding client-sent ones). */
export interface DataEventPayload extends JsonObject {
  /** Display name of the sender, from the token's `name` claim. */
  senderName: string;
  /** RFC 3339 UTC with milliseconds, set by the server. */
  timestamp: string;
  /** Unique id set by the server. */
  messageId: string;
  action?: string;
  resource?: string;
  data?: JsonObject;
}

/** `presence_event` payload. */
export interface PresenceEventPayload {
  userId: number;
  username: string;
  status: string;
  context: JsonObject | null;
  timestamp: string;
}

/** `server_ack` payload. */
export interface ServerAckPayload {
  acknowledgedPid: string;
  status: string;
}

export type DataEventMessage = ServerToClientMessage<DataEventPayload> & { type: "data_event" };
export type PresenceEventMessage = ServerToClientMessage<PresenceEventPayload> & { type: "presence_event" };
export type ServerAckMessage = ServerToClientMessage<ServerAckPayload> & { type: "server_ack" };
export type GenericResponseMessage<P = unknown> = ServerToClientMessage<P> & {
  type: "generic_response";
  pid: string;
};
export type GenericRequestMessage = ServerToClientMessage<GenericRequestPayload> & {
  type: "generic_request";
  pid: string;
};
export type ErrorNotificationMessage = ServerToClientMessage & {
  type: "error_notification";
  error: ErrorPayload;
};

// ---------------------------------------------------------------- built-in actions

/** `whoami` response. */
export interface WhoAmIResponse {
  userId: number;
  username: string;
  roles: string[];
}

/** `ping` response. */
export interface PingResponse {
  serverTime: string;
}

/** One entry of a `get_presence` response. */
export interface PresenceInfo {
  userId: number;
  username: string;
  status: string;
  context: JsonObject | null;
  since: string;
}

/** `get_presence` response. */
export interface GetPresenceResponse {
  users: PresenceInfo[];
}

/** `refresh_token` response. */
export interface RefreshTokenResponse {
  ok: boolean;
  /** New expiry, unix seconds. */
  exp: number;
}

// ---------------------------------------------------------------- guards

export function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Validates the outer shape of a parsed server frame. Payloads stay `unknown`
 * to the validator; typed accessors narrow them where the client relies on them.
 */
export function parseServerMessage(raw: string): ServerToClientMessage | undefined {
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    return undefined;
  }
  if (!isObject(value) || typeof value.type !== "string") return undefined;
  if (value.pid !== undefined && typeof value.pid !== "string") return undefined;
  if (value.fromUserId !== undefined && typeof value.fromUserId !== "number") return undefined;
  if (value.error !== undefined) {
    const e = value.error;
    if (!isObject(e) || typeof e.code !== "number" || typeof e.message !== "string") return undefined;
    if (e.originalPid !== undefined && typeof e.originalPid !== "string") return undefined;
  }
  return value as unknown as ServerToClientMessage;
}

/**
 * Short unique pids: a random per-generator prefix plus a base-36 counter,
 * e.g. `k3x9-1a`. Unique for the life of a client (the counter never resets
 * across reconnects), far under the gateway's 128-byte limit, and cheap.
 */
export function createPidGenerator(random: () => number = Math.random, prefix?: string): () => string {
  const p = prefix ?? Math.floor(random() * 36 ** 4).toString(36).padStart(4, "0");
  let counter = 0;
  return () => `${p}-${(++counter).toString(36)}`;
}

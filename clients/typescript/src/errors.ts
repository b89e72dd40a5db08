import type { ErrorPayload, ServerToClientMessage } from "./types.js";

/** Base class of every error this SDK raises or rejects with. */
export class CustomWSError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** The server answered a request with `error_notification` (matched by `error.originalPid`). */
export class ServerError extends CustomWSError {
  readonly code: number;
  readonly originalPid: string | undefined;
  readonly envelope: ServerToClientMessage;
  constructor(error: ErrorPayload, envelope: ServerToClientMessage) {
    super(`server error ${error.code}: ${error.message}`);
    this.code = error.code;
    this.originalPid = error.originalPid;
    this.envelope = envelope;
  }
}

/** No `server_ack` / `generic_response` arrived in time. */
export class TimeoutError extends CustomWSError {
  constructor(
    readonly pid: string,
    readonly timeoutMs: number,
  ) {
    super(`no answer for pid ${pid} within ${timeoutMs} ms`);
  }
}

/** Sending while disconnected, with no queue configured (or a message kind that is never queued). */
export class NotConnectedError extends CustomWSError {
  constructor() {
    super("not connected");
  }
}

/** The outgoing queue was full: either this message was refused (`reject`) or it was the oldest one dropped (`drop-oldest`). */
export class QueueOverflowError extends CustomWSError {
  constructor(readonly policy: "drop-oldest" | "reject") {
    super(policy === "reject" ? "outgoing queue full: message rejected" : "outgoing queue full: oldest message dropped");
  }
}

/**
 * The connection dropped while the answer was outstanding. The message may or may
 * not have reached the server; the SDK never resends it by itself.
 */
export class ConnectionLostError extends CustomWSError {
  constructor(
    readonly code: number,
    readonly reason: string,
  ) {
    super(`connection lost (${code}${reason ? ` ${reason}` : ""}) before the answer arrived`);
  }
}

/** `close()` was called, or the client gave up reconnecting. */
export class ClientClosedError extends CustomWSError {
  constructor(readonly reason: string = "client closed") {
    super(reason);
  }
}

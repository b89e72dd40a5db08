import { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from "./backoff.js";
import { Emitter } from "./emitter.js";
import {
  ClientClosedError,
  ConnectionLostError,
  CustomWSError,
  NotConnectedError,
  QueueOverflowError,
  ServerError,
  TimeoutError,
} from "./errors.js";
import { decodeJwtExp, isJwtExpired } from "./jwt.js";
import { createPidGenerator } from "./pid.js";
import {
  BEARER_SUBPROTOCOL_PREFIX,
  CloseCode,
  isObject,
  parseServerMessage,
  SUBPROTOCOL,
  type ClientAckPayload,
  type ClientToServerMessage,
  type DataEventMessage,
  type ErrorNotificationMessage,
  type GenericRequestMessage,
  type GenericRequestPayload,
  type GenericResponseMessage,
  type GetPresenceResponse,
  type JsonObject,
  type PingResponse,
  type PresenceEventMessage,
  type RefreshTokenResponse,
  type ServerAckMessage,
  type ServerAckPayload,
  type ServerToClientMessage,
  type WhoAmIResponse,
} from "./types.js";

// ---------------------------------------------------------------- socket abstraction

/** Method-style signature: lets `ws`'s and the DOM's handler types both fit (parameter bivariance). */
type Handler<E> = { bivarianceHack(event: E): void }["bivarianceHack"];

export interface MessageEventLike {
  data: unknown;
}
export interface CloseEventLike {
  code: number;
  reason: string;
  wasClean?: boolean;
}

/** What the client needs of a WebSocket: the browser's `WebSocket` and the `ws` package both fit. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: Handler<unknown> | null;
  onmessage: Handler<MessageEventLike> | null;
  onclose: Handler<CloseEventLike> | null;
  onerror: Handler<unknown> | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/** Third constructor argument, understood by the `ws` package (browsers ignore it). */
export interface WebSocketConstructorOptions {
  headers?: Record<string, string>;
}

export interface WebSocketConstructor {
  new (url: string, protocols?: string | string[], options?: WebSocketConstructorOptions): WebSocketLike;
}

const OPEN = 1;
/** The gateway refuses longer pids (gateway.md section 4). */
const MAX_PID_BYTES = 128;

function utf8Length(s: string): number {
  return new TextEncoder().encode(s).length;
}
/** setTimeout's largest delay; longer ones fire at once in browsers and Node. */
const MAX_TIMER_MS = 2 ** 31 - 1;

// ---------------------------------------------------------------- options and events

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export type QueueOverflowPolicy = "drop-oldest" | "reject";

export interface QueueOptions {
  /** Most messages held while disconnected. */
  maxSize: number;
  /** `drop-oldest` (default): make room by dropping the oldest; `reject`: refuse the new one. */
  overflow?: QueueOverflowPolicy;
  /** Called with each message that is dropped or refused. */
  onDrop?: (message: ClientToServerMessage, policy: QueueOverflowPolicy) => void;
}

export interface ReconnectOptions extends Partial<BackoffOptions> {
  /** Default true. */
  enabled?: boolean;
  /** Give up after this many consecutive failed attempts. Default: never. */
  maxAttempts?: number;
}

export interface TokenRefreshOptions {
  /** Default true (effective only with `getToken`). */
  enabled?: boolean;
  /** Refresh this long before the token's `exp`. Default 60 000 ms. */
  leadMs?: number;
  /** After a failed refresh, try again after this long (while the token is still valid). Default 10 000 ms. */
  retryMs?: number;
}

export interface AutoAckOptions {
  /** `status` of the automatic `client_ack`. Default "received". */
  status?: string;
}

/** Why the client stopped for good (besides a deliberate `close()`). */
export type GiveUpReason = "replaced" | "policy" | "token_expired" | "max_attempts" | "reconnect_disabled";

export interface OpenInfo {
  /** True when this open follows a drop (not the first connect). */
  reconnected: boolean;
  /** The subprotocol the server selected (normally `customws.v1`). */
  protocol: string | undefined;
}

export interface CloseInfo {
  code: number;
  reason: string;
  wasClean: boolean;
  /** True when `close()` was called. */
  deliberate: boolean;
  /** True when a reconnect is scheduled. */
  willReconnect: boolean;
}

export interface ReconnectInfo {
  /** 1 for the first retry after a drop. */
  attempt: number;
  delayMs: number;
}

export interface GiveUpInfo {
  reason: GiveUpReason;
  code: number | undefined;
}

export interface QueueDropInfo {
  message: ClientToServerMessage;
  policy: QueueOverflowPolicy;
}

/** Events of `client.on(...)`. Each has the matching `WSClientCallbacks` member. */
export interface ClientEvents {
  open: OpenInfo;
  close: CloseInfo;
  error: unknown;
  stateChange: ConnectionState;
  reconnecting: ReconnectInfo;
  giveUp: GiveUpInfo;
  /** Every server message, before the typed events. */
  message: ServerToClientMessage;
  dataEvent: DataEventMessage;
  presenceEvent: PresenceEventMessage;
  serverAck: ServerAckMessage;
  genericResponse: GenericResponseMessage;
  genericRequest: GenericRequestMessage;
  errorNotification: ErrorNotificationMessage;
  /** A message of a type this SDK does not know (forward compatibility). */
  unknownMessage: ServerToClientMessage;
  queueDrop: QueueDropInfo;
  tokenRefreshed: { exp: number };
  tokenRefreshFailed: unknown;
}

/** The guide's `WSClientCallbacks`: one optional function per event. */
export interface WSClientCallbacks {
  onOpen?: (info: OpenInfo) => void;
  onClose?: (info: CloseInfo) => void;
  onError?: (error: unknown) => void;
  onStateChange?: (state: ConnectionState) => void;
  onReconnecting?: (info: ReconnectInfo) => void;
  onGiveUp?: (info: GiveUpInfo) => void;
  onMessage?: (message: ServerToClientMessage) => void;
  onDataEvent?: (message: DataEventMessage) => void;
  onPresenceEvent?: (message: PresenceEventMessage) => void;
  onServerAck?: (message: ServerAckMessage) => void;
  onGenericResponse?: (message: GenericResponseMessage) => void;
  onGenericRequest?: (message: GenericRequestMessage) => void;
  onErrorNotification?: (message: ErrorNotificationMessage) => void;
  onUnknownMessage?: (message: ServerToClientMessage) => void;
  onQueueDrop?: (info: QueueDropInfo) => void;
  onTokenRefreshed?: (info: { exp: number }) => void;
  onTokenRefreshFailed?: (error: unknown) => void;
}

const CALLBACK_OF: { [K in keyof ClientEvents]: keyof WSClientCallbacks } = {
  open: "onOpen",
  close: "onClose",
  error: "onError",
  stateChange: "onStateChange",
  reconnecting: "onReconnecting",
  giveUp: "onGiveUp",
  message: "onMessage",
  dataEvent: "onDataEvent",
  presenceEvent: "onPresenceEvent",
  serverAck: "onServerAck",
  genericResponse: "onGenericResponse",
  genericRequest: "onGenericRequest",
  errorNotification: "onErrorNotification",
  unknownMessage: "onUnknownMessage",
  queueDrop: "onQueueDrop",
  tokenRefreshed: "onTokenRefreshed",
  tokenRefreshFailed: "onTokenRefreshFailed",
};

export type TokenSource = () => string | null | undefined | Promise<string | null | undefined>;

/** Answers a server-initiated `generic_request`; the return value becomes the `generic_response` payload. */
export type RequestHandler = (
  data: JsonObject | undefined,
  request: GenericRequestMessage,
) => unknown | Promise<unknown>;

export interface WebSocketClientOptions {
  /** e.g. `wss://gateway.example.com/ws`. */
  url: string;
  /** A fixed JWT. Ignored when `getToken` is given. */
  token?: string;
  /** Called before every connect and reconnect, and before an in-band refresh. */
  getToken?: TokenSource;
  /** WebSocket implementation; required where no global `WebSocket` exists (Node < 22: pass `ws`). */
  WebSocket?: WebSocketConstructor;
  /** Also send `Authorization: Bearer <jwt>` (only runtimes that take headers, e.g. `ws`). Default false. */
  authHeader?: boolean;
  /** Also send the token as query parameter `token` (leaks into proxy logs; off by default). */
  tokenInQuery?: boolean;
  /** Event callbacks (same events as `on()`). */
  callbacks?: WSClientCallbacks;
  /** `false` disables reconnection. */
  reconnect?: boolean | ReconnectOptions;
  /** Source of randomness for jitter and the pid prefix; `Math.random` by default (tests inject their own). */
  random?: () => number;
  /** Default timeout of `sendMessageWithAck`. Default 10 000 ms. */
  ackTimeoutMs?: number;
  /** Default timeout of `sendGenericRequest`. Default 10 000 ms. */
  requestTimeoutMs?: number;
  /** Abort a connect attempt that has not opened after this long. Default 15 000 ms. */
  connectTimeoutMs?: number;
  /** Bounded queue of `data_request` / `generic_request` messages sent while disconnected. Off by default. */
  queue?: QueueOptions | false;
  /** Acknowledge server messages that carry a pid automatically (`client_ack`). Default false. */
  autoAck?: boolean | AutoAckOptions;
  /** In-band token refresh before expiry (needs `getToken`). */
  tokenRefresh?: boolean | TokenRefreshOptions;
  /** A server `generic_request` with no handler: answer 501 (default) or leave it to your own listener. */
  unhandledRequests?: "reply-501" | "ignore";
  /** Prefix of client pids (default: 4 random base-36 characters). */
  pidPrefix?: string;
}

/** Options of one send. */
export interface SendOptions {
  timeoutMs?: number;
  /** Hold the message in the queue while disconnected (default: per the client's `queue` option). */
  queue?: boolean;
}

export interface GenericRequestOptions extends SendOptions {
  targetUserId?: number;
}

/**
 * What the client does after a close it did not ask for:
 * - `stop`: 4000 (a newer connection replaced this one: reconnecting would kick it out in turn)
 *   and 1008 (policy: the server refuses us; retrying is abuse);
 * - `refresh-token`: 4001 (expired): reconnect only with a different, unexpired token;
 * - `reconnect`: everything else (1000/1001 server restart or drain, 1006 network, 1011, 1013, ...).
 */
export type ReconnectDecision = "reconnect" | "stop" | "refresh-token";

export function reconnectDecision(code: number, deliberate: boolean): ReconnectDecision {
  if (deliberate) return "stop";
  if (code === CloseCode.Replaced || code === CloseCode.PolicyViolation) return "stop";
  if (code === CloseCode.TokenExpired) return "refresh-token";
  return "reconnect";
}

// ---------------------------------------------------------------- client

type Timer = ReturnType<typeof setTimeout>;

interface Pending {
  kind: "ack" | "request";
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
  timer: Timer;
  /** The socket it was written to; undefined while it waits in the queue. */
  sentOn: WebSocketLike | undefined;
}

interface QueuedMessage {
  message: ClientToServerMessage;
  pendingPid: string | undefined;
}

/** Types worth holding while disconnected; the rest are bound to one connection or go stale. */
const QUEUEABLE = new Set<string>(["data_request", "generic_request"]);

/**
 * A customws connection that stays up: token via subprotocol (and header where the
 * runtime allows), reconnect with backoff, ack and request correlation, an optional
 * bounded outgoing queue, and in-band token refresh.
 */
export class WebSocketClient {
  private readonly opts: WebSocketClientOptions;
  private readonly Impl: WebSocketConstructor;
  private readonly random: () => number;
  private readonly backoff: BackoffOptions;
  private readonly reconnectEnabled: boolean;
  private readonly maxAttempts: number;
  private readonly events: Emitter<ClientEvents>;
  private readonly newPid: () => string;
  private readonly pending = new Map<string, Pending>();
  private readonly queue: QueuedMessage[] = [];
  private readonly requestHandlers = new Map<string, RequestHandler>();

  private socket: WebSocketLike | undefined;
  private _state: ConnectionState = "idle";
  private token: string | undefined;
  /** Set by a 4001 close: the next connect needs a token different from this one. */
  private expiredToken: string | undefined;
  private attempt = 0;
  private everOpened = false;
  private deliberate = false;
  /** Bumped by every connect and by close(): a stale async step sees it changed and stops. */
  private generation = 0;
  private reconnectTimer: Timer | undefined;
  private connectTimer: Timer | undefined;
  private refreshTimer: Timer | undefined;
  private waiters: Array<{ resolve: () => void; reject: (e: unknown) => void }> = [];

  constructor(options: WebSocketClientOptions) {
    this.opts = options;
    const Impl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!Impl) {
      throw new CustomWSError(
        "no WebSocket implementation: pass one as the `WebSocket` option (e.g. `import WebSocket from \"ws\"`)",
      );
    }
    this.Impl = Impl;
    this.random = options.random ?? Math.random;
    const rc = typeof options.reconnect === "object" ? options.reconnect : {};
    this.reconnectEnabled = options.reconnect !== false && rc.enabled !== false;
    this.maxAttempts = rc.maxAttempts ?? Infinity;
    this.backoff = {
      initialDelayMs: rc.initialDelayMs ?? DEFAULT_BACKOFF.initialDelayMs,
      maxDelayMs: rc.maxDelayMs ?? DEFAULT_BACKOFF.maxDelayMs,
      multiplier: rc.multiplier ?? DEFAULT_BACKOFF.multiplier,
      jitter: rc.jitter ?? DEFAULT_BACKOFF.jitter,
    };
    this.token = options.token;
    this.newPid = createPidGenerator(this.random, options.pidPrefix);
    this.events = new Emitter<ClientEvents>((error) => this.reportListenerError(error));
  }

  // ------------------------------------------------------------ public: lifecycle

  get state(): ConnectionState {
    return this._state;
  }

  get isOpen(): boolean {
    return this._state === "open";
  }

  /** Messages waiting in the outgoing queue. */
  get queuedCount(): number {
    return this.queue.length;
  }

  /** Answers (acks and responses) still outstanding. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /**
   * Opens the connection (and keeps it open). Resolves on the next successful open;
   * rejects with `ClientClosedError` if the client closes or gives up first (a
   * rejection nobody awaits is not reported as unhandled).
   */
  connect(): Promise<void> {
    if (this._state === "open") return Promise.resolve();
    const opened = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    // `void client.connect()` followed by `close()` must not surface as an unhandled rejection
    // (fatal in Node); callers that await the promise still see the rejection.
    opened.catch(() => undefined);
    if (this._state === "idle" || this._state === "closed") {
      this.deliberate = false;
      this.attempt = 0;
      this.expiredToken = undefined;
      void this.openSocket();
    }
    return opened;
  }

  /**
   * Deliberate close: no reconnect. Outstanding answers and queued messages are
   * rejected with `ClientClosedError`. `connect()` may be called again later.
   */
  close(code: number = CloseCode.Normal, reason = "client closed"): void {
    if (this._state === "closed" || this._state === "idle") {
      this.deliberate = true;
      return;
    }
    this.deliberate = true;
    this.generation++;
    const ws = this.socket;
    this.detachSocket();
    if (ws) {
      try {
        ws.close(code, reason);
      } catch (error) {
        this.emit("error", error);
      }
    }
    this.finish(new ClientClosedError(reason));
    this.emit("close", { code, reason, wasClean: true, deliberate: true, willReconnect: false });
  }

  /**
   * Skips the rest of the current backoff wait and tries now (e.g. on the browser's
   * `online` event). Does nothing unless a reconnect is scheduled.
   */
  reconnectNow(): void {
    if (this.reconnectTimer === undefined || this.deliberate) return;
    this.clearTimer("reconnectTimer");
    void this.openSocket();
  }

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): () => void {
    return this.events.on(event, listener);
  }

  once<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): () => void {
    return this.events.once(event, listener);
  }

  off<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): void {
    this.events.off(event, listener);
  }

  /** A fresh client pid (unique for this client's life). */
  generatePid(): string {
    return this.newPid();
  }

  /** The token the client currently uses (after `getToken` / refresh). */
  get currentToken(): string | undefined {
    return this.token;
  }

  // ------------------------------------------------------------ public: sending

  /**
   * Sends an envelope as is (fire and forget). While disconnected, `data_request` and
   * `generic_request` go to the queue if one is configured; otherwise, and for the
   * other types, it throws `NotConnectedError`. A full queue with policy `reject`
   * throws `QueueOverflowError`. Returns the message's pid, if it has one.
   */
  sendMessage(message: ClientToServerMessage, options: { queue?: boolean } = {}): string | undefined {
    this.sendOrQueue(message, undefined, options.queue);
    return message.pid;
  }

  /**
   * Sends with a pid (generated when absent) and resolves with the `server_ack`
   * payload (`{acknowledgedPid, status}`); rejects with `ServerError` on a matching
   * `error_notification`, `TimeoutError`, `ConnectionLostError` if the connection
   * drops first, or the errors of `sendMessage`.
   */
  sendMessageWithAck(message: ClientToServerMessage, options: SendOptions = {}): Promise<ServerAckPayload> {
    const pid = message.pid ?? this.newPid();
    const timeoutMs = options.timeoutMs ?? this.opts.ackTimeoutMs ?? 10_000;
    return this.track<ServerAckPayload>("ack", { ...message, pid }, timeoutMs, options.queue);
  }

  /**
   * Sends `generic_request` `{action, resource?, data?}` and resolves with the payload
   * of the `generic_response` that carries the same pid.
   */
  sendGenericRequest<T = unknown>(payload: GenericRequestPayload, options: GenericRequestOptions = {}): Promise<T> {
    const pid = this.newPid();
    const timeoutMs = options.timeoutMs ?? this.opts.requestTimeoutMs ?? 10_000;
    const message: ClientToServerMessage & { pid: string } = { pid, type: "generic_request", payload };
    if (options.targetUserId !== undefined) message.targetUserId = options.targetUserId;
    return this.track<T>("request", message, timeoutMs, options.queue);
  }

  /**
   * `presence_update` `{status, context?}` to one user (`targetUserId`) or everyone.
   * Never queued (presence goes stale): returns false when not connected.
   */
  sendPresenceUpdate(status: string, targetUserId?: number | null, context?: JsonObject | null): boolean {
    const payload: JsonObject = { status };
    if (context !== undefined && context !== null) payload.context = context;
    const message: ClientToServerMessage = { type: "presence_update", payload };
    if (targetUserId !== undefined && targetUserId !== null) message.targetUserId = targetUserId;
    return this.transmit(message);
  }

  /** `client_ack` for a server message's pid. Returns false when not connected. */
  sendClientAck(acknowledgedPid: string, status = "received", error?: string): boolean {
    const payload: ClientAckPayload = { acknowledgedPid, status };
    if (error !== undefined) payload.error = error;
    return this.transmit({ type: "client_ack", payload });
  }

  /** Answers a server-initiated `generic_request` (same pid). Returns false when not connected. */
  sendGenericResponse(pid: string, payload: unknown): boolean {
    return this.transmit({ pid, type: "generic_response", payload });
  }

  /**
   * Registers the answer to server-initiated `generic_request`s with this `action`
   * (`"*"`: any action without its own handler). Returns the unregister function.
   */
  onRequest(action: string, handler: RequestHandler): () => void {
    this.requestHandlers.set(action, handler);
    return () => {
      if (this.requestHandlers.get(action) === handler) this.requestHandlers.delete(action);
    };
  }

  // ------------------------------------------------------------ public: built-in gateway actions

  /** `whoami` → `{userId, username, roles}`. */
  whoami(options?: GenericRequestOptions): Promise<WhoAmIResponse> {
    return this.sendGenericRequest<WhoAmIResponse>({ action: "whoami" }, options);
  }

  /** `ping` → `{serverTime}`. */
  ping(options?: GenericRequestOptions): Promise<PingResponse> {
    return this.sendGenericRequest<PingResponse>({ action: "ping" }, options);
  }

  /** `get_presence`: every online user, or only `userIds`. */
  getPresence(userIds?: number[], options?: GenericRequestOptions): Promise<GetPresenceResponse> {
    const payload: GenericRequestPayload = { action: "get_presence" };
    if (userIds) payload.data = { userIds };
    return this.sendGenericRequest<GetPresenceResponse>(payload, options);
  }

  /**
   * In-band `refresh_token`: sends `token` (or a fresh one from `getToken`) on the open
   * connection, which moves its expiry. Resolves with the new `exp` (unix seconds).
   */
  async refreshToken(token?: string): Promise<number> {
    const fresh = token ?? (await this.fetchToken());
    if (!fresh) throw new CustomWSError("no token to refresh with");
    if (fresh === this.token) throw new CustomWSError("getToken returned the current token; nothing to refresh");
    const res = await this.sendGenericRequest<RefreshTokenResponse>(
      { action: "refresh_token", data: { token: fresh } },
      { queue: false },
    );
    if (!isObject(res) || res.ok !== true) throw new CustomWSError("refresh_token refused");
    this.token = fresh;
    const exp = typeof res.exp === "number" ? res.exp : (decodeJwtExp(fresh) ?? 0);
    this.emit("tokenRefreshed", { exp });
    this.scheduleRefresh();
    return exp;
  }

  // ------------------------------------------------------------ connection internals

  private async openSocket(): Promise<void> {
    const gen = ++this.generation;
    this.setState(this.everOpened || this.attempt > 0 ? "reconnecting" : "connecting");
    let token: string | undefined;
    try {
      token = this.opts.getToken ? ((await this.opts.getToken()) ?? undefined) : this.token;
    } catch (error) {
      if (gen !== this.generation) return;
      this.emit("error", error);
      this.afterFailure(CloseCode.Abnormal);
      return;
    }
    if (gen !== this.generation) return;
    this.token = token;
    if (token !== undefined) {
      const stale = this.expiredToken !== undefined && token === this.expiredToken;
      if (stale || isJwtExpired(token, Date.now())) {
        // Connecting would only earn a 401 (or another 4001): stop instead of looping.
        this.giveUp("token_expired", this.expiredToken !== undefined ? CloseCode.TokenExpired : undefined);
        return;
      }
    } else if (this.expiredToken !== undefined) {
      this.giveUp("token_expired", CloseCode.TokenExpired);
      return;
    }
    this.expiredToken = undefined;

    let url = this.opts.url;
    const protocols = [SUBPROTOCOL];
    let ctorOptions: WebSocketConstructorOptions | undefined;
    if (token !== undefined) {
      protocols.push(BEARER_SUBPROTOCOL_PREFIX + token);
      if (this.opts.authHeader) ctorOptions = { headers: { Authorization: `Bearer ${token}` } };
      if (this.opts.tokenInQuery) {
        url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
      }
    }

    let ws: WebSocketLike;
    try {
      ws = ctorOptions ? new this.Impl(url, protocols, ctorOptions) : new this.Impl(url, protocols);
    } catch (error) {
      this.emit("error", error);
      this.afterFailure(CloseCode.Abnormal);
      return;
    }
    this.socket = ws;
    ws.onopen = () => {
      if (this.socket === ws) this.handleOpen(ws);
    };
    ws.onmessage = (event: MessageEventLike) => {
      if (this.socket === ws) this.handleData(event.data);
    };
    ws.onerror = (event: unknown) => {
      if (this.socket === ws) this.emit("error", event);
    };
    ws.onclose = (event: CloseEventLike) => {
      if (this.socket === ws) this.handleClose(ws, event);
    };
    const connectTimeoutMs = this.opts.connectTimeoutMs ?? 15_000;
    this.connectTimer = setTimeout(() => {
      if (this.socket !== ws || ws.readyState === OPEN) return;
      this.detachSocket();
      try {
        ws.close();
      } catch {
        // a socket still connecting may refuse close(); it is abandoned either way
      }
      this.handleClose(ws, { code: CloseCode.Abnormal, reason: "connect timeout", wasClean: false });
    }, connectTimeoutMs);
  }

  private handleOpen(ws: WebSocketLike): void {
    this.clearTimer("connectTimer");
    const reconnected = this.everOpened;
    this.everOpened = true;
    this.attempt = 0;
    this.setState("open");
    // Queued messages first, in order, before anything a listener sends on open.
    while (this.queue.length > 0 && this.socket === ws && ws.readyState === OPEN) {
      const item = this.queue.shift();
      if (item) this.write(ws, item.message, item.pendingPid);
    }
    const protocol = (ws as { protocol?: string }).protocol;
    this.emit("open", { reconnected, protocol: protocol === "" ? undefined : protocol });
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.resolve();
    this.scheduleRefresh();
  }

  private handleClose(ws: WebSocketLike, event: CloseEventLike): void {
    if (this.socket === ws) this.detachSocket();
    const code = typeof event.code === "number" ? event.code : CloseCode.Abnormal;
    const reason = typeof event.reason === "string" ? event.reason : "";
    // Answers written on this socket will never come: fail them now rather than at their timeout.
    for (const [pid, p] of this.pending) {
      if (p.sentOn === ws) {
        this.pending.delete(pid);
        clearTimeout(p.timer);
        p.reject(new ConnectionLostError(code, reason));
      }
    }
    const decision = reconnectDecision(code, this.deliberate);
    let willReconnect = false;
    if (decision === "refresh-token") {
      this.expiredToken = this.token;
      willReconnect = this.reconnectEnabled && this.opts.getToken !== undefined && this.attempt < this.maxAttempts;
    } else if (decision === "reconnect") {
      willReconnect = this.reconnectEnabled && this.attempt < this.maxAttempts;
    }
    this.emit("close", { code, reason, wasClean: event.wasClean ?? false, deliberate: false, willReconnect });
    if (decision === "stop") {
      this.giveUp(code === CloseCode.Replaced ? "replaced" : "policy", code);
    } else if (decision === "refresh-token" && this.opts.getToken === undefined) {
      this.giveUp("token_expired", code);
    } else {
      this.afterFailure(code);
    }
  }

  /** A connect failed or an open connection dropped: schedule the next attempt or give up. */
  private afterFailure(code: number): void {
    if (this.deliberate) return;
    if (!this.reconnectEnabled) {
      this.giveUp("reconnect_disabled", code);
      return;
    }
    if (this.attempt >= this.maxAttempts) {
      this.giveUp("max_attempts", code);
      return;
    }
    const delayMs = backoffDelay(this.attempt, this.backoff, this.random);
    this.attempt++;
    this.setState("reconnecting");
    this.emit("reconnecting", { attempt: this.attempt, delayMs });
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.openSocket();
    }, delayMs);
  }

  private giveUp(reason: GiveUpReason, code: number | undefined): void {
    this.generation++;
    const ws = this.socket;
    this.detachSocket();
    if (ws) {
      try {
        ws.close(CloseCode.Normal, reason);
      } catch {
        // already closing
      }
    }
    this.finish(new ClientClosedError(`gave up: ${reason}`));
    this.emit("giveUp", { reason, code });
  }

  /** Terminal state: clears timers, fails everything outstanding. */
  private finish(error: ClientClosedError): void {
    this.clearTimer("reconnectTimer");
    this.clearTimer("connectTimer");
    this.clearTimer("refreshTimer");
    this.setState("closed");
    for (const [pid, p] of this.pending) {
      this.pending.delete(pid);
      clearTimeout(p.timer);
      p.reject(error);
    }
    this.queue.length = 0;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(error);
  }

  private detachSocket(): void {
    const ws = this.socket;
    this.socket = undefined;
    this.clearTimer("connectTimer");
    this.clearTimer("refreshTimer");
    if (ws) {
      ws.onopen = null;
      ws.onmessage = null;
      ws.onerror = null;
      ws.onclose = null;
    }
  }

  // ------------------------------------------------------------ token refresh

  private async fetchToken(): Promise<string | undefined> {
    if (!this.opts.getToken) return undefined;
    return (await this.opts.getToken()) ?? undefined;
  }

  private scheduleRefresh(): void {
    this.clearTimer("refreshTimer");
    const cfg = typeof this.opts.tokenRefresh === "object" ? this.opts.tokenRefresh : {};
    if (this.opts.tokenRefresh === false || cfg.enabled === false || !this.opts.getToken) return;
    if (this._state !== "open" || this.token === undefined) return;
    const exp = decodeJwtExp(this.token);
    if (exp === undefined) return;
    const leadMs = cfg.leadMs ?? 60_000;
    const delay = Math.max(1_000, exp * 1000 - leadMs - Date.now());
    this.setRefreshTimer(delay, exp, cfg.retryMs ?? 10_000);
  }

  private setRefreshTimer(delay: number, exp: number, retryMs: number): void {
    if (delay > MAX_TIMER_MS) {
      this.refreshTimer = setTimeout(() => this.scheduleRefresh(), MAX_TIMER_MS);
      return;
    }
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = undefined;
      this.refreshToken().catch((error: unknown) => {
        this.emit("tokenRefreshFailed", error);
        // Try again while the current token still holds; past exp the server closes 4001.
        if (this._state === "open" && Date.now() + retryMs < exp * 1000) {
          this.setRefreshTimer(retryMs, exp, retryMs);
        }
      });
    }, delay);
  }

  // ------------------------------------------------------------ sending internals

  private track<T>(
    kind: Pending["kind"],
    message: ClientToServerMessage & { pid: string },
    timeoutMs: number,
    queue: boolean | undefined,
  ): Promise<T> {
    const pid = message.pid;
    if (this.pending.has(pid)) return Promise.reject(new CustomWSError(`pid ${pid} is already awaiting an answer`));
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.get(pid) !== entry) return;
        this.pending.delete(pid);
        this.removeQueued(pid);
        reject(new TimeoutError(pid, timeoutMs));
      }, timeoutMs);
      const entry: Pending = { kind, resolve: resolve as (v: unknown) => void, reject, timer, sentOn: undefined };
      this.pending.set(pid, entry);
      try {
        this.sendOrQueue(message, pid, queue);
      } catch (error) {
        this.pending.delete(pid);
        clearTimeout(timer);
        reject(error);
      }
    });
  }

  private sendOrQueue(message: ClientToServerMessage, pendingPid: string | undefined, queue: boolean | undefined): void {
    if (message.pid !== undefined && utf8Length(message.pid) > MAX_PID_BYTES) {
      throw new CustomWSError(`pid longer than ${MAX_PID_BYTES} bytes`);
    }
    const ws = this.socket;
    if (ws && this._state === "open" && ws.readyState === OPEN) {
      this.write(ws, message, pendingPid);
      return;
    }
    const q = this.opts.queue;
    const mayQueue = queue ?? true;
    if (!q || !mayQueue || !QUEUEABLE.has(message.type) || this._state === "closed" || this._state === "idle") {
      throw this._state === "closed" && this.deliberate ? new ClientClosedError() : new NotConnectedError();
    }
    if (this.queue.length >= q.maxSize) {
      const policy = q.overflow ?? "drop-oldest";
      if (policy === "reject" || q.maxSize <= 0) {
        this.reportDrop(message, "reject");
        throw new QueueOverflowError("reject");
      }
      const dropped = this.queue.shift();
      if (dropped) {
        this.reportDrop(dropped.message, policy);
        if (dropped.pendingPid !== undefined) this.failPending(dropped.pendingPid, new QueueOverflowError(policy));
      }
    }
    this.queue.push({ message, pendingPid });
  }

  private write(ws: WebSocketLike, message: ClientToServerMessage, pendingPid: string | undefined): void {
    ws.send(JSON.stringify(message));
    if (pendingPid !== undefined) {
      const p = this.pending.get(pendingPid);
      if (p) p.sentOn = ws;
    }
  }

  /** Writes now or reports false; for message kinds that are never queued. */
  private transmit(message: ClientToServerMessage): boolean {
    const ws = this.socket;
    if (!ws || this._state !== "open" || ws.readyState !== OPEN) return false;
    try {
      ws.send(JSON.stringify(message));
      return true;
    } catch (error) {
      this.emit("error", error);
      return false;
    }
  }

  private removeQueued(pid: string): void {
    const i = this.queue.findIndex((q) => q.pendingPid === pid);
    if (i >= 0) this.queue.splice(i, 1);
  }

  private failPending(pid: string, error: unknown): void {
    const p = this.pending.get(pid);
    if (!p) return;
    this.pending.delete(pid);
    clearTimeout(p.timer);
    p.reject(error);
  }

  private reportDrop(message: ClientToServerMessage, policy: QueueOverflowPolicy): void {
    const q = this.opts.queue;
    if (q && q.onDrop) {
      try {
        q.onDrop(message, policy);
      } catch (error) {
        this.reportListenerError(error);
      }
    }
    this.emit("queueDrop", { message, policy });
  }

  // ------------------------------------------------------------ receiving

  private handleData(data: unknown): void {
    let text: string;
    if (typeof data === "string") text = data;
    else if (data instanceof ArrayBuffer) text = new TextDecoder().decode(data);
    else if (ArrayBuffer.isView(data)) text = new TextDecoder().decode(data);
    else {
      this.emit("error", new CustomWSError("unsupported frame data"));
      return;
    }
    const message = parseServerMessage(text);
    if (!message) {
      this.emit("error", new CustomWSError(`malformed server message: ${text.slice(0, 200)}`));
      return;
    }
    this.emit("message", message);
    switch (message.type) {
      case "server_ack": {
        const payload = message.payload;
        const pid = isObject(payload) && typeof payload.acknowledgedPid === "string" ? payload.acknowledgedPid : undefined;
        if (pid !== undefined) this.settle(pid, "ack", payload);
        this.emit("serverAck", message as ServerAckMessage);
        return;
      }
      case "generic_response": {
        if (message.pid !== undefined) this.settle(message.pid, "request", message.payload);
        this.emit("genericResponse", message as GenericResponseMessage);
        return;
      }
      case "error_notification": {
        const error = message.error ?? { code: 0, message: "error_notification without error" };
        const pid = error.originalPid;
        if (pid !== undefined) this.failPending(pid, new ServerError(error, message));
        this.emit("errorNotification", { ...message, error } as ErrorNotificationMessage);
        return;
      }
      case "generic_request":
        this.emit("genericRequest", message as GenericRequestMessage);
        void this.answerRequest(message);
        return;
      case "data_event":
        this.emit("dataEvent", message as DataEventMessage);
        this.maybeAutoAck(message);
        return;
      case "presence_event":
        this.emit("presenceEvent", message as PresenceEventMessage);
        this.maybeAutoAck(message);
        return;
      default:
        this.emit("unknownMessage", message);
        this.maybeAutoAck(message);
    }
  }

  private settle(pid: string, kind: Pending["kind"], value: unknown): void {
    const p = this.pending.get(pid);
    if (!p || p.kind !== kind) return;
    this.pending.delete(pid);
    clearTimeout(p.timer);
    p.resolve(value);
  }

  private maybeAutoAck(message: ServerToClientMessage): void {
    const auto = this.opts.autoAck;
    if (!auto || message.pid === undefined) return;
    const status = typeof auto === "object" && auto.status !== undefined ? auto.status : "received";
    this.sendClientAck(message.pid, status);
  }

  private async answerRequest(message: ServerToClientMessage): Promise<void> {
    const pid = message.pid;
    if (pid === undefined) return;
    const payload = isObject(message.payload) ? message.payload : {};
    const action = typeof payload.action === "string" ? payload.action : "";
    const handler = this.requestHandlers.get(action) ?? this.requestHandlers.get("*");
    const ws = this.socket;
    if (!handler) {
      if ((this.opts.unhandledRequests ?? "reply-501") === "reply-501") {
        this.sendGenericResponse(pid, { error: { code: 501, message: `unsupported action: ${action}` } });
      }
      return;
    }
    let reply: unknown;
    try {
      const data = isObject(payload.data) ? payload.data : undefined;
      reply = await handler(data, message as GenericRequestMessage);
    } catch (error) {
      reply = { error: { code: 500, message: error instanceof Error ? error.message : String(error) } };
    }
    // The answer belongs to the connection that asked.
    if (this.socket === ws) this.sendGenericResponse(pid, reply ?? {});
  }

  // ------------------------------------------------------------ small helpers

  private setState(state: ConnectionState): void {
    if (this._state === state) return;
    this._state = state;
    this.emit("stateChange", state);
  }

  private emit<K extends keyof ClientEvents>(event: K, value: ClientEvents[K]): void {
    const cb = this.opts.callbacks?.[CALLBACK_OF[event]] as ((v: ClientEvents[K]) => void) | undefined;
    if (cb) {
      try {
        cb(value);
      } catch (error) {
        this.reportListenerError(error);
      }
    }
    this.events.emit(event, value);
  }

  private reportListenerError(error: unknown): void {
    // A throwing error listener must not recurse: both paths below swallow their own throws.
    try {
      this.opts.callbacks?.onError?.(error);
    } catch {
      // ignored
    }
    this.events.emitQuiet("error", error);
  }

  private clearTimer(name: "reconnectTimer" | "connectTimer" | "refreshTimer"): void {
    const t = this[name];
    if (t !== undefined) {
      clearTimeout(t);
      this[name] = undefined;
    }
  }
}

import type { CloseEventLike, MessageEventLike, WebSocketClient, WebSocketConstructorOptions, WebSocketLike } from "../src/index.js";

/** In-memory stand-in for a WebSocket: tests drive the server side by hand. */
export class FakeWebSocket implements WebSocketLike {
  static instances: FakeWebSocket[] = [];
  static reset(): void {
    FakeWebSocket.instances = [];
  }
  static get last(): FakeWebSocket {
    const ws = FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    if (!ws) throw new Error("no socket created");
    return ws;
  }

  readyState = 0;
  protocol = "";
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: MessageEventLike) => void) | null = null;
  onclose: ((event: CloseEventLike) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  readonly sent: string[] = [];
  closedWith: { code?: number; reason?: string } | undefined;

  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
    readonly options?: WebSocketConstructorOptions,
  ) {
    FakeWebSocket.instances.push(this);
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("InvalidStateError: not open");
    this.sent.push(data);
  }

  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code: code ?? 1005, reason: reason ?? "", wasClean: true });
  }

  // ---- server side

  /** The server accepts: selects the subprotocol and opens. */
  open(): void {
    this.readyState = 1;
    this.protocol = "customws.v1";
    this.onopen?.({});
  }

  receive(message: unknown): void {
    this.onmessage?.({ data: typeof message === "string" ? message : JSON.stringify(message) });
  }

  /** The server (or the network) closes the connection. */
  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }

  /** Parsed messages the client wrote. */
  get messages(): Array<{ pid?: string; type: string; targetUserId?: number; payload: any }> {
    return this.sent.map((s) => JSON.parse(s));
  }

  lastMessage(): { pid?: string; type: string; targetUserId?: number; payload: any } {
    const m = this.messages[this.messages.length - 1];
    if (!m) throw new Error("nothing sent");
    return m;
  }
}

/** A JWT with the given claims (unsigned: the client never verifies). */
export function makeJwt(claims: Record<string, unknown>): string {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.c2ln`;
}

/** Deterministic "random": cycles through the given values. */
export function sequence(...values: number[]): () => number {
  let i = 0;
  return () => {
    const v = values[i % values.length];
    i++;
    return v ?? 0;
  };
}

/** Lets pending promise callbacks (getToken, handlers) run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

export async function openClient(client: WebSocketClient): Promise<FakeWebSocket> {
  const p = client.connect();
  await settle();
  const ws = FakeWebSocket.last;
  ws.open();
  await p;
  return ws;
}

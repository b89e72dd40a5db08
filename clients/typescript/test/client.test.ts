import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  ClientClosedError,
  ConnectionLostError,
  createPidGenerator,
  decodeJwtExp,
  NotConnectedError,
  QueueOverflowError,
  reconnectDecision,
  ServerError,
  TimeoutError,
  WebSocketClient,
  type WebSocketClientOptions,
} from "../src/index.js";
import { FakeWebSocket, makeJwt, openClient, settle } from "./fake-socket.js";

function make(opts: Partial<WebSocketClientOptions> = {}): WebSocketClient {
  return new WebSocketClient({
    url: "ws://gw/ws",
    token: "tok",
    WebSocket: FakeWebSocket,
    random: () => 0.5,
    reconnect: { initialDelayMs: 100, jitter: 0 },
    ...opts,
  });
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});
afterEach(() => vi.useRealTimers());

describe("connection and authentication", () => {
  it("sends the token as the subprotocol pair and selects customws.v1", async () => {
    const client = make();
    const opened = vi.fn();
    client.on("open", opened);
    const ws = await openClient(client);
    expect(ws.url).toBe("ws://gw/ws");
    expect(ws.protocols).toEqual(["customws.v1", "bearer.tok"]);
    expect(ws.options).toBeUndefined();
    expect(opened).toHaveBeenCalledWith({ reconnected: false, protocol: "customws.v1" });
    expect(client.state).toBe("open");
  });

  it("adds the Authorization header and the query parameter only when asked", async () => {
    const client = make({ authHeader: true, tokenInQuery: true, url: "ws://gw/ws?x=1" });
    const ws = await openClient(client);
    expect(ws.options).toEqual({ headers: { Authorization: "Bearer tok" } });
    expect(ws.url).toBe("ws://gw/ws?x=1&token=tok");
  });

  it("connects without a bearer entry when there is no token (cookie auth)", async () => {
    const ws = await openClient(make({ token: undefined }));
    expect(ws.protocols).toEqual(["customws.v1"]);
  });

  it("asks getToken before every connect and reconnect", async () => {
    let n = 0;
    const getToken = vi.fn(async () => `t${++n}`);
    const client = make({ token: undefined, getToken });
    await openClient(client);
    expect(FakeWebSocket.last.protocols).toEqual(["customws.v1", "bearer.t1"]);
    FakeWebSocket.last.serverClose(1006);
    await vi.advanceTimersByTimeAsync(100);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(FakeWebSocket.last.protocols).toEqual(["customws.v1", "bearer.t2"]);
  });

  it("requires a WebSocket implementation where no global exists", () => {
    const g = globalThis as { WebSocket?: unknown };
    const saved = g.WebSocket;
    delete g.WebSocket;
    try {
      expect(() => new WebSocketClient({ url: "ws://x" })).toThrow(/WebSocket implementation/);
    } finally {
      if (saved !== undefined) g.WebSocket = saved;
    }
  });

  it("ignores events of a replaced socket", async () => {
    const client = make();
    const ws1 = await openClient(client);
    const onData = vi.fn();
    client.on("dataEvent", onData);
    ws1.serverClose(1006);
    await vi.advanceTimersByTimeAsync(100);
    ws1.receive({ type: "data_event", payload: {} }); // late frame of the dead socket
    expect(onData).not.toHaveBeenCalled();
  });
});

describe("reconnect decisions per close code", () => {
  it("as a pure function", () => {
    expect(reconnectDecision(1000, true)).toBe("stop");
    expect(reconnectDecision(1000, false)).toBe("reconnect");
    expect(reconnectDecision(1001, false)).toBe("reconnect");
    expect(reconnectDecision(1006, false)).toBe("reconnect");
    expect(reconnectDecision(1013, false)).toBe("reconnect");
    expect(reconnectDecision(4000, false)).toBe("stop");
    expect(reconnectDecision(1008, false)).toBe("stop");
    expect(reconnectDecision(4001, false)).toBe("refresh-token");
  });

  it("1000 after a deliberate close(): no reconnect, ever", async () => {
    const closeInfo = vi.fn();
    const client = make({ callbacks: { onClose: closeInfo } });
    const ws = await openClient(client);
    client.close();
    expect(ws.closedWith).toEqual({ code: 1000, reason: "client closed" });
    expect(closeInfo).toHaveBeenCalledWith(expect.objectContaining({ code: 1000, deliberate: true, willReconnect: false }));
    await vi.advanceTimersByTimeAsync(120_000);
    expect(FakeWebSocket.instances.length).toBe(1);
    expect(client.state).toBe("closed");
  });

  it("close() while a reconnect is scheduled cancels it", async () => {
    const client = make();
    await openClient(client);
    FakeWebSocket.last.serverClose(1006);
    expect(client.state).toBe("reconnecting");
    client.close();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeWebSocket.instances.length).toBe(1);
  });

  it("close() while getToken is still running stops the connect", async () => {
    let release!: (t: string) => void;
    const client = make({ token: undefined, getToken: () => new Promise<string>((r) => (release = r)) });
    const p = client.connect();
    client.close();
    release("late");
    await settle();
    expect(FakeWebSocket.instances.length).toBe(0);
    await expect(p).rejects.toBeInstanceOf(ClientClosedError);
  });

  for (const code of [1000, 1001, 1006, 1011, 1013]) {
    it(`${code} from the server: reconnects`, async () => {
      const client = make();
      const closes: boolean[] = [];
      client.on("close", (c) => closes.push(c.willReconnect));
      await openClient(client);
      FakeWebSocket.last.serverClose(code);
      expect(closes).toEqual([true]);
      expect(client.state).toBe("reconnecting");
      await vi.advanceTimersByTimeAsync(100);
      expect(FakeWebSocket.instances.length).toBe(2);
      const reopened = vi.fn();
      client.on("open", reopened);
      FakeWebSocket.last.open();
      expect(reopened).toHaveBeenCalledWith({ reconnected: true, protocol: "customws.v1" });
    });
  }

  for (const [code, reason] of [
    [4000, "replaced"],
    [1008, "policy"],
  ] as const) {
    it(`${code}: stops (${reason})`, async () => {
      const giveUp = vi.fn();
      const client = make({ callbacks: { onGiveUp: giveUp } });
      await openClient(client);
      FakeWebSocket.last.serverClose(code);
      await vi.advanceTimersByTimeAsync(120_000);
      expect(FakeWebSocket.instances.length).toBe(1);
      expect(giveUp).toHaveBeenCalledWith({ reason, code });
      expect(client.state).toBe("closed");
    });
  }

  it("4001 without getToken: stops", async () => {
    const giveUp = vi.fn();
    const client = make({ callbacks: { onGiveUp: giveUp } });
    await openClient(client);
    FakeWebSocket.last.serverClose(4001, "token expired");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeWebSocket.instances.length).toBe(1);
    expect(giveUp).toHaveBeenCalledWith({ reason: "token_expired", code: 4001 });
  });

  it("4001 with getToken returning the same token: one check, no loop", async () => {
    const getToken = vi.fn(() => "same");
    const giveUp = vi.fn();
    const client = make({ token: undefined, getToken, callbacks: { onGiveUp: giveUp } });
    await openClient(client);
    FakeWebSocket.last.serverClose(4001);
    await vi.advanceTimersByTimeAsync(600_000);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(FakeWebSocket.instances.length).toBe(1);
    expect(giveUp).toHaveBeenCalledWith({ reason: "token_expired", code: 4001 });
  });

  it("4001 with a fresh token: reconnects with it", async () => {
    const tokens = ["old", "new"];
    const client = make({ token: undefined, getToken: () => tokens.shift() ?? "none" });
    await openClient(client);
    FakeWebSocket.last.serverClose(4001);
    await vi.advanceTimersByTimeAsync(100);
    expect(FakeWebSocket.instances.length).toBe(2);
    expect(FakeWebSocket.last.protocols).toEqual(["customws.v1", "bearer.new"]);
  });

  it("does not connect with a token whose exp has passed", async () => {
    const giveUp = vi.fn();
    const expired = makeJwt({ sub: 1, exp: Math.floor(Date.now() / 1000) - 10 });
    const client = make({ token: expired, callbacks: { onGiveUp: giveUp } });
    await expect(client.connect()).rejects.toBeInstanceOf(ClientClosedError);
    expect(FakeWebSocket.instances.length).toBe(0);
    expect(giveUp).toHaveBeenCalledWith({ reason: "token_expired", code: undefined });
  });

  it("reconnectNow() skips the remaining backoff wait", async () => {
    const client = make({ reconnect: { initialDelayMs: 10_000, jitter: 0 } });
    await openClient(client);
    FakeWebSocket.last.serverClose(1006);
    client.reconnectNow();
    await settle();
    expect(FakeWebSocket.instances.length).toBe(2);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(FakeWebSocket.instances.length).toBe(2); // the cancelled timer does not fire too
  });

  it("reconnect: false gives up on the first drop", async () => {
    const giveUp = vi.fn();
    const client = make({ reconnect: false, callbacks: { onGiveUp: giveUp } });
    await openClient(client);
    FakeWebSocket.last.serverClose(1006);
    expect(giveUp).toHaveBeenCalledWith({ reason: "reconnect_disabled", code: 1006 });
  });
});

describe("sendMessageWithAck", () => {
  it("resolves with the matching server_ack only", async () => {
    const client = make();
    const ws = await openClient(client);
    const p = client.sendMessageWithAck({ type: "data_request", targetUserId: 7, payload: { text: "hi" } });
    const sent = ws.lastMessage();
    expect(sent).toMatchObject({ type: "data_request", targetUserId: 7, payload: { text: "hi" } });
    expect(typeof sent.pid).toBe("string");
    let done = false;
    void p.then(() => (done = true));
    ws.receive({ type: "server_ack", payload: { acknowledgedPid: "other", status: "delivered" } });
    ws.receive({ type: "generic_response", pid: sent.pid, payload: {} }); // wrong kind
    await settle();
    expect(done).toBe(false);
    ws.receive({ type: "server_ack", payload: { acknowledgedPid: sent.pid, status: "delivered" } });
    await expect(p).resolves.toEqual({ acknowledgedPid: sent.pid, status: "delivered" });
    expect(client.pendingCount).toBe(0);
  });

  it("keeps a caller's pid", async () => {
    const client = make();
    const ws = await openClient(client);
    const p = client.sendMessageWithAck({ pid: "mine", type: "data_request", payload: {} });
    expect(ws.lastMessage().pid).toBe("mine");
    ws.receive({ type: "server_ack", payload: { acknowledgedPid: "mine", status: "delivered" } });
    await expect(p).resolves.toMatchObject({ acknowledgedPid: "mine" });
  });

  it("rejects on the error_notification whose originalPid matches", async () => {
    const client = make();
    const ws = await openClient(client);
    const errors = vi.fn();
    client.on("errorNotification", errors);
    const p = client.sendMessageWithAck({ type: "data_request", targetUserId: 9, payload: {} });
    const pid = ws.lastMessage().pid;
    ws.receive({ type: "error_notification", error: { originalPid: "nope", code: 400, message: "x" } });
    ws.receive({ type: "error_notification", error: { originalPid: pid, code: 404, message: "target not connected" } });
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ServerError);
    expect((err as ServerError).code).toBe(404);
    expect((err as ServerError).originalPid).toBe(pid);
    expect(errors).toHaveBeenCalledTimes(2);
  });

  it("times out", async () => {
    const client = make({ ackTimeoutMs: 2000 });
    await openClient(client);
    const p = client.sendMessageWithAck({ type: "data_request", payload: {} });
    const caught = p.catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(1999);
    expect(client.pendingCount).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    const err = await caught;
    expect(err).toBeInstanceOf(TimeoutError);
    expect((err as TimeoutError).timeoutMs).toBe(2000);
    expect(client.pendingCount).toBe(0);
  });

  it("a per-call timeout overrides the default; a late ack is ignored", async () => {
    const client = make();
    const ws = await openClient(client);
    const p = client.sendMessageWithAck({ type: "data_request", payload: {} }, { timeoutMs: 50 });
    const caught = p.catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(50);
    expect(await caught).toBeInstanceOf(TimeoutError);
    ws.receive({ type: "server_ack", payload: { acknowledgedPid: ws.lastMessage().pid, status: "delivered" } });
  });

  it("fails fast with ConnectionLostError when the connection drops", async () => {
    const client = make();
    const ws = await openClient(client);
    const p = client.sendMessageWithAck({ type: "data_request", payload: {} });
    ws.serverClose(1006);
    const err = await p.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConnectionLostError);
    expect((err as ConnectionLostError).code).toBe(1006);
  });

  it("rejects with NotConnectedError when disconnected and no queue", async () => {
    const client = make();
    await expect(client.sendMessageWithAck({ type: "data_request", payload: {} })).rejects.toBeInstanceOf(
      NotConnectedError,
    );
    expect(() => client.sendMessage({ type: "data_request", payload: {} })).toThrow(NotConnectedError);
  });

  it("close() rejects everything outstanding with ClientClosedError", async () => {
    const client = make();
    await openClient(client);
    const a = client.sendMessageWithAck({ type: "data_request", payload: {} });
    const b = client.sendGenericRequest({ action: "whoami" });
    client.close();
    await expect(a).rejects.toBeInstanceOf(ClientClosedError);
    await expect(b).rejects.toBeInstanceOf(ClientClosedError);
  });
});

describe("sendGenericRequest", () => {
  it("resolves with the payload of the generic_response carrying the same pid", async () => {
    const client = make();
    const ws = await openClient(client);
    const p = client.sendGenericRequest<{ users: unknown[] }>({ action: "get_presence", data: { userIds: [1] } });
    const sent = ws.lastMessage();
    expect(sent).toMatchObject({ type: "generic_request", payload: { action: "get_presence", data: { userIds: [1] } } });
    ws.receive({ type: "server_ack", payload: { acknowledgedPid: sent.pid, status: "delivered" } }); // wrong kind
    ws.receive({ type: "generic_response", pid: "zzz", payload: { users: ["no"] } });
    ws.receive({ type: "generic_response", pid: sent.pid, payload: { users: [] } });
    await expect(p).resolves.toEqual({ users: [] });
  });

  it("correlates concurrent requests answered out of order", async () => {
    const client = make();
    const ws = await openClient(client);
    const a = client.whoami();
    const b = client.ping();
    const [ma, mb] = ws.messages;
    ws.receive({ type: "generic_response", pid: mb!.pid, payload: { serverTime: "2026-01-01T00:00:00.000Z" } });
    ws.receive({ type: "generic_response", pid: ma!.pid, payload: { userId: 1, username: "a", roles: [] } });
    await expect(a).resolves.toEqual({ userId: 1, username: "a", roles: [] });
    await expect(b).resolves.toEqual({ serverTime: "2026-01-01T00:00:00.000Z" });
  });

  it("rejects on a matching error_notification (501) and on timeout", async () => {
    const client = make({ requestTimeoutMs: 1000 });
    const ws = await openClient(client);
    const p = client.sendGenericRequest({ action: "nope" });
    ws.receive({ type: "error_notification", error: { originalPid: ws.lastMessage().pid, code: 501, message: "unsupported" } });
    await expect(p).rejects.toMatchObject({ code: 501 });
    const q = client.sendGenericRequest({ action: "slow" }).catch((e: unknown) => e);
    await vi.advanceTimersByTimeAsync(1000);
    expect(await q).toBeInstanceOf(TimeoutError);
  });

  it("refuses a pid over the gateway's 128-byte limit", async () => {
    const client = make();
    await openClient(client);
    await expect(client.sendMessageWithAck({ pid: "x".repeat(129), type: "data_request", payload: {} })).rejects.toThrow(/128 bytes/);
    expect(client.pendingCount).toBe(0);
  });

  it("generates short unique pids", () => {
    const gen = createPidGenerator(() => 0.5);
    const pids = new Set(Array.from({ length: 10_000 }, () => gen()));
    expect(pids.size).toBe(10_000);
    for (const pid of pids) expect(pid.length).toBeLessThanOrEqual(12);
  });
});

describe("server-initiated requests and acks", () => {
  it("answers generic_request through the handler with the same pid", async () => {
    const client = make();
    const ws = await openClient(client);
    client.onRequest("get_client_info", async (data) => ({ echo: data?.q, tz: "UTC" }));
    ws.receive({ type: "generic_request", pid: "s-1", payload: { action: "get_client_info", data: { q: 1 } } });
    await settle();
    expect(ws.lastMessage()).toEqual({ pid: "s-1", type: "generic_response", payload: { echo: 1, tz: "UTC" } });
  });

  it("a throwing handler answers 500, a missing one 501 (or nothing with 'ignore')", async () => {
    const client = make();
    const ws = await openClient(client);
    client.onRequest("boom", () => {
      throw new Error("bad");
    });
    ws.receive({ type: "generic_request", pid: "s-2", payload: { action: "boom" } });
    await settle();
    expect(ws.lastMessage()).toEqual({ pid: "s-2", type: "generic_response", payload: { error: { code: 500, message: "bad" } } });
    ws.receive({ type: "generic_request", pid: "s-3", payload: { action: "unknown" } });
    await settle();
    expect(ws.lastMessage()).toMatchObject({ pid: "s-3", payload: { error: { code: 501 } } });

    const quiet = make({ unhandledRequests: "ignore" });
    const ws2 = await openClient(quiet);
    ws2.receive({ type: "generic_request", pid: "s-4", payload: { action: "unknown" } });
    await settle();
    expect(ws2.sent).toEqual([]);
  });

  it("a '*' handler catches actions without their own handler; unregister works", async () => {
    const client = make();
    const ws = await openClient(client);
    const off = client.onRequest("*", () => ({ any: true }));
    ws.receive({ type: "generic_request", pid: "s-5", payload: { action: "x" } });
    await settle();
    expect(ws.lastMessage().payload).toEqual({ any: true });
    off();
    ws.receive({ type: "generic_request", pid: "s-6", payload: { action: "x" } });
    await settle();
    expect(ws.lastMessage().payload).toMatchObject({ error: { code: 501 } });
  });

  it("auto-acks server messages that carry a pid, when enabled", async () => {
    const client = make({ autoAck: true });
    const ws = await openClient(client);
    ws.receive({ type: "data_event", pid: "srv-1", fromUserId: 2, payload: { senderName: "b", timestamp: "t", messageId: "m" } });
    ws.receive({ type: "data_event", fromUserId: 2, payload: {} }); // no pid: no ack
    ws.receive({ type: "presence_event", pid: "srv-2", payload: {} });
    ws.receive({ type: "generic_response", pid: "srv-3", payload: {} }); // answers, not acked
    expect(ws.messages).toEqual([
      { type: "client_ack", payload: { acknowledgedPid: "srv-1", status: "received" } },
      { type: "client_ack", payload: { acknowledgedPid: "srv-2", status: "received" } },
    ]);
  });

  it("does not auto-ack by default; manual sendClientAck works", async () => {
    const client = make();
    const ws = await openClient(client);
    ws.receive({ type: "data_event", pid: "srv-1", payload: {} });
    expect(ws.sent).toEqual([]);
    expect(client.sendClientAck("srv-1", "processed", "oops")).toBe(true);
    expect(ws.lastMessage()).toEqual({
      type: "client_ack",
      payload: { acknowledgedPid: "srv-1", status: "processed", error: "oops" },
    });
  });

  it("dispatches typed events and survives malformed frames and throwing listeners", async () => {
    const onError = vi.fn();
    const onData = vi.fn(() => {
      throw new Error("listener bug");
    });
    const client = make({ callbacks: { onError, onDataEvent: onData } });
    const ws = await openClient(client);
    const presence = vi.fn();
    const unknown = vi.fn();
    client.on("presenceEvent", presence);
    client.on("unknownMessage", unknown);
    ws.receive("not json");
    ws.receive({ nope: 1 });
    ws.receive({ type: "data_event", fromUserId: 3, payload: { senderName: "c", timestamp: "t", messageId: "m" } });
    ws.receive({ type: "presence_event", fromUserId: 3, payload: { userId: 3, username: "c", status: "online", context: null, timestamp: "t" } });
    ws.receive({ type: "future_type", payload: {} });
    expect(onData).toHaveBeenCalledTimes(1);
    expect(presence).toHaveBeenCalledTimes(1);
    expect(unknown).toHaveBeenCalledTimes(1);
    expect(onError).toHaveBeenCalledTimes(3); // two malformed frames, one listener throw
    expect(client.state).toBe("open");
  });

  it("sendPresenceUpdate puts targetUserId at top level and returns false when offline", async () => {
    const client = make();
    expect(client.sendPresenceUpdate("online")).toBe(false);
    const ws = await openClient(client);
    expect(client.sendPresenceUpdate("typing", 456, { chatId: "c" })).toBe(true);
    expect(ws.lastMessage()).toEqual({ type: "presence_update", targetUserId: 456, payload: { status: "typing", context: { chatId: "c" } } });
    client.sendPresenceUpdate("away", null);
    expect(ws.lastMessage()).toEqual({ type: "presence_update", payload: { status: "away" } });
  });
});

describe("outgoing queue", () => {
  it("holds messages while reconnecting and flushes them in order on open", async () => {
    const client = make({ queue: { maxSize: 10 } });
    await openClient(client);
    FakeWebSocket.last.serverClose(1006);
    client.sendMessage({ type: "data_request", payload: { n: 1 } });
    const acked = client.sendMessageWithAck({ type: "data_request", payload: { n: 2 } });
    client.sendMessage({ type: "data_request", payload: { n: 3 } });
    expect(client.queuedCount).toBe(3);
    expect(() => client.sendMessage({ type: "presence_update", payload: { status: "x" } })).toThrow(NotConnectedError);
    expect(client.sendPresenceUpdate("away")).toBe(false);
    await vi.advanceTimersByTimeAsync(100);
    const ws = FakeWebSocket.last;
    ws.open();
    expect(ws.messages.map((m) => m.payload.n)).toEqual([1, 2, 3]);
    expect(client.queuedCount).toBe(0);
    ws.receive({ type: "server_ack", payload: { acknowledgedPid: ws.messages[1]!.pid, status: "delivered" } });
    await expect(acked).resolves.toMatchObject({ status: "delivered" });
  });

  it("drop-oldest keeps the newest maxSize, reports drops and rejects a dropped ack", async () => {
    const onDrop = vi.fn();
    const client = make({ queue: { maxSize: 2, overflow: "drop-oldest", onDrop } });
    await openClient(client);
    FakeWebSocket.last.serverClose(1006);
    const first = client.sendMessageWithAck({ type: "data_request", payload: { n: 1 } });
    client.sendMessage({ type: "data_request", payload: { n: 2 } });
    client.sendMessage({ type: "data_request", payload: { n: 3 } });
    client.sendMessage({ type: "data_request", payload: { n: 4 } });
    expect(client.queuedCount).toBe(2);
    expect(onDrop.mock.calls.map((c) => (c[0] as { payload: { n: number } }).payload.n)).toEqual([1, 2]);
    expect(onDrop.mock.calls[0]![1]).toBe("drop-oldest");
    await expect(first).rejects.toBeInstanceOf(QueueOverflowError);
    await vi.advanceTimersByTimeAsync(100);
    FakeWebSocket.last.open();
    expect(FakeWebSocket.last.messages.map((m) => m.payload.n)).toEqual([3, 4]);
  });

  it("reject refuses new messages when full", async () => {
    const drops = vi.fn();
    const client = make({ queue: { maxSize: 1, overflow: "reject" } });
    client.on("queueDrop", drops);
    await openClient(client);
    FakeWebSocket.last.serverClose(1006);
    client.sendMessage({ type: "data_request", payload: { n: 1 } });
    expect(() => client.sendMessage({ type: "data_request", payload: { n: 2 } })).toThrow(QueueOverflowError);
    await expect(client.sendGenericRequest({ action: "x" })).rejects.toBeInstanceOf(QueueOverflowError);
    expect(drops).toHaveBeenCalledTimes(2);
    expect(client.queuedCount).toBe(1);
  });

  it("a queued request that times out leaves the queue", async () => {
    const client = make({ queue: { maxSize: 5 }, requestTimeoutMs: 300 });
    await openClient(client);
    FakeWebSocket.last.serverClose(1006);
    const p = client.sendGenericRequest({ action: "whoami" }).catch((e: unknown) => e);
    expect(client.queuedCount).toBe(1);
    await vi.advanceTimersByTimeAsync(300);
    expect(await p).toBeInstanceOf(TimeoutError);
    expect(client.queuedCount).toBe(0);
  });

  it("queue: false per call refuses to queue", async () => {
    const client = make({ queue: { maxSize: 5 } });
    await openClient(client);
    FakeWebSocket.last.serverClose(1006);
    expect(() => client.sendMessage({ type: "data_request", payload: {} }, { queue: false })).toThrow(NotConnectedError);
  });

  it("giving up drops the queue and rejects what waited in it", async () => {
    const client = make({ queue: { maxSize: 5 } });
    await openClient(client);
    FakeWebSocket.last.serverClose(1006);
    const p = client.sendMessageWithAck({ type: "data_request", payload: {} });
    await vi.advanceTimersByTimeAsync(100);
    FakeWebSocket.last.serverClose(4000);
    await expect(p).rejects.toBeInstanceOf(ClientClosedError);
    expect(client.queuedCount).toBe(0);
  });
});

describe("in-band token refresh", () => {
  it("sends refresh_token with a fresh token before exp and schedules the next one", async () => {
    const now = Math.floor(Date.now() / 1000);
    const t1 = makeJwt({ sub: 1, exp: now + 120 });
    const t2 = makeJwt({ sub: 1, exp: now + 600 });
    const tokens = [t1, t2];
    const refreshed = vi.fn();
    const client = make({
      token: undefined,
      getToken: () => tokens.shift() ?? t2,
      tokenRefresh: { leadMs: 60_000 },
      callbacks: { onTokenRefreshed: refreshed },
    });
    expect(decodeJwtExp(t1)).toBe(now + 120);
    const ws = await openClient(client);
    await vi.advanceTimersByTimeAsync(59_000);
    expect(ws.sent).toEqual([]);
    await vi.advanceTimersByTimeAsync(1_500);
    const req = ws.lastMessage();
    expect(req).toMatchObject({ type: "generic_request", payload: { action: "refresh_token", data: { token: t2 } } });
    ws.receive({ type: "generic_response", pid: req.pid, payload: { ok: true, exp: now + 600 } });
    await settle();
    expect(refreshed).toHaveBeenCalledWith({ exp: now + 600 });
    expect(client.currentToken).toBe(t2);
  });

  it("reports a failed refresh and retries while the token still holds", async () => {
    const now = Math.floor(Date.now() / 1000);
    const t1 = makeJwt({ sub: 1, exp: now + 100 });
    const failed = vi.fn();
    const client = make({
      token: undefined,
      getToken: () => t1, // never a new one
      tokenRefresh: { leadMs: 60_000, retryMs: 10_000 },
      callbacks: { onTokenRefreshFailed: failed },
    });
    const ws = await openClient(client);
    await vi.advanceTimersByTimeAsync(40_500);
    expect(failed).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(failed).toHaveBeenCalledTimes(2);
    expect(ws.sent).toEqual([]); // nothing to send without a new token
  });

  it("refreshToken(token) can be called by hand", async () => {
    const client = make();
    const ws = await openClient(client);
    const p = client.refreshToken("fresh");
    ws.receive({ type: "generic_response", pid: ws.lastMessage().pid, payload: { ok: true, exp: 42 } });
    await expect(p).resolves.toBe(42);
    expect(client.currentToken).toBe("fresh");
  });
});

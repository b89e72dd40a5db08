import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ChatSystem, NotificationSystem, P2PMessaging, ServerError, WebSocketClient } from "../src/index.js";
import { FakeWebSocket, openClient } from "./fake-socket.js";

let client: WebSocketClient;
let ws: FakeWebSocket;

beforeEach(async () => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
  client = new WebSocketClient({ url: "ws://gw/ws", token: "t", WebSocket: FakeWebSocket });
  ws = await openClient(client);
});
afterEach(() => vi.useRealTimers());

const ack = (status = "delivered") =>
  ws.receive({ type: "server_ack", payload: { acknowledgedPid: ws.lastMessage().pid, status } });

describe("P2PMessaging", () => {
  it("sends a private chat message to one user and resolves on the ack", async () => {
    const p2p = new P2PMessaging(client);
    const p = p2p.sendPrivateMessage(456, "hola");
    const m = ws.lastMessage();
    expect(m).toMatchObject({
      type: "data_request",
      targetUserId: 456,
      payload: { action: "send_message", resource: "chat", data: { text: "hola", messageType: "private" } },
    });
    ack();
    await expect(p).resolves.toMatchObject({ status: "delivered" });
  });

  it("rejects with ServerError 404 when the target is offline", async () => {
    const p = new P2PMessaging(client).sendToUser(9, { hello: 1 });
    ws.receive({ type: "error_notification", error: { originalPid: ws.lastMessage().pid, code: 404, message: "target not connected" } });
    await expect(p).rejects.toBeInstanceOf(ServerError);
  });

  it("invitations and calls carry the guide's payloads", async () => {
    const p2p = new P2PMessaging(client);
    const inv = p2p.sendCollaborationInvite(3, { id: "p1", name: "Project" });
    expect(ws.lastMessage().payload).toMatchObject({ action: "send_invitation", resource: "collaboration", data: { projectId: "p1", role: "editor" } });
    ack();
    await inv;
    const call = p2p.initiateVideoCall(3, "sdp");
    const callId = ws.lastMessage().payload.data.callId;
    ack();
    await expect(call).resolves.toMatchObject({ callId });
  });

  it("onMessage filters by sender and flattens the server fields", () => {
    const got: unknown[] = [];
    new P2PMessaging(client).onMessage((e) => got.push([e.senderId, e.senderName, e.data.text, e.messageId]), 2);
    const ev = (from: number) => ({
      type: "data_event",
      fromUserId: from,
      payload: { action: "send_message", resource: "chat", data: { text: `from ${from}` }, senderName: `u${from}`, timestamp: "2026-01-01T00:00:00.000Z", messageId: `m${from}` },
    });
    ws.receive(ev(2));
    ws.receive(ev(3));
    expect(got).toEqual([[2, "u2", "from 2", "m2"]]);
  });
});

describe("ChatSystem", () => {
  it("public messages are broadcasts, private ones are targeted; both acked", async () => {
    const chat = new ChatSystem(client);
    const a = chat.sendPublicMessage("hi all");
    expect(ws.lastMessage()).toMatchObject({ type: "data_request", payload: { data: { text: "hi all", messageType: "public" } } });
    expect(ws.lastMessage().targetUserId).toBeUndefined();
    ack();
    await a;
    const b = chat.sendPrivateMessage(4, "psst");
    expect(ws.lastMessage()).toMatchObject({ targetUserId: 4, payload: { data: { text: "psst", messageType: "private" } } });
    ack();
    await b;
  });

  it("onMessage yields chat messages only", () => {
    const got: string[] = [];
    new ChatSystem(client).onMessage((m) => got.push(`${m.senderName}:${m.text}:${m.messageType}`));
    ws.receive({ type: "data_event", fromUserId: 1, payload: { action: "send_message", resource: "chat", data: { text: "x", messageType: "public" }, senderName: "ann", timestamp: "t", messageId: "1" } });
    ws.receive({ type: "data_event", fromUserId: 1, payload: { resource: "notification", data: {}, senderName: "ann", timestamp: "t", messageId: "2" } });
    expect(got).toEqual(["ann:x:public"]);
  });

  it("getChatHistory is a generic_request", async () => {
    const p = new ChatSystem(client).getChatHistory("room", 10);
    const m = ws.lastMessage();
    expect(m).toMatchObject({ type: "generic_request", payload: { action: "get_history", resource: "chat", data: { chatId: "room", limit: 10 } } });
    ws.receive({ type: "generic_response", pid: m.pid, payload: { messages: [] } });
    await expect(p).resolves.toEqual({ messages: [] });
  });
});

describe("NotificationSystem", () => {
  it("targets users through data.targetUsers, with ack", async () => {
    const n = new NotificationSystem(client);
    const p = n.sendNotification([1, 2], { title: "Build green" });
    expect(ws.lastMessage()).toMatchObject({
      type: "data_request",
      payload: { action: "send_notification", resource: "notification", data: { title: "Build green", targetUsers: [1, 2] } },
    });
    ack();
    await p;
  });

  it("markAsRead is a request to the server, not a broadcast", () => {
    void new NotificationSystem(client).markAsRead("n1").catch(() => undefined);
    expect(ws.lastMessage()).toMatchObject({ type: "generic_request", payload: { action: "mark_read", data: { notificationId: "n1" } } });
  });

  it("onNotification yields notifications only", () => {
    const got: unknown[] = [];
    new NotificationSystem(client).onNotification((e) => got.push(e.data.title));
    ws.receive({ type: "data_event", fromUserId: 1, payload: { resource: "notification", data: { title: "T" }, senderName: "a", timestamp: "t", messageId: "1" } });
    ws.receive({ type: "data_event", fromUserId: 1, payload: { resource: "chat", data: {}, senderName: "a", timestamp: "t", messageId: "2" } });
    expect(got).toEqual(["T"]);
  });
});

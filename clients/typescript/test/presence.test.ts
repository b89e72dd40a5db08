import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { PresenceManager, stateKey, WebSocketClient, type PresenceManagerOptions } from "../src/index.js";
import { FakeWebSocket, openClient } from "./fake-socket.js";

class FakeTarget {
  hidden = false;
  listeners = new Map<string, Set<() => void>>();
  addEventListener(type: string, fn: () => void): void {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type)!.add(fn);
  }
  removeEventListener(type: string, fn: () => void): void {
    this.listeners.get(type)?.delete(fn);
  }
  fire(type: string): void {
    for (const fn of this.listeners.get(type) ?? []) fn();
  }
  count(): number {
    let n = 0;
    for (const s of this.listeners.values()) n += s.size;
    return n;
  }
}

let client: WebSocketClient;
let ws: FakeWebSocket;

async function setup(opts: PresenceManagerOptions = {}): Promise<PresenceManager> {
  client = new WebSocketClient({ url: "ws://gw/ws", token: "t", WebSocket: FakeWebSocket, random: () => 0, reconnect: { initialDelayMs: 10 } });
  ws = await openClient(client);
  return new PresenceManager(client, { environment: {}, ...opts });
}

const presence = () => ws.messages.filter((m) => m.type === "presence_update");

beforeEach(() => {
  vi.useFakeTimers();
  FakeWebSocket.reset();
});
afterEach(() => vi.useRealTimers());

describe("PresenceManager: debounce and send-on-change", () => {
  it("one typing message for a burst of keystrokes, one online after the auto-stop", async () => {
    const pm = await setup({ typingTimeoutMs: 3000 });
    for (let i = 0; i < 40; i++) {
      pm.typing("general");
      await vi.advanceTimersByTimeAsync(50); // 20 keys per second for 2 s
    }
    expect(presence()).toEqual([{ type: "presence_update", payload: { status: "typing", context: { chatId: "general" } } }]);
    await vi.advanceTimersByTimeAsync(2999);
    expect(presence()).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(100);
    expect(presence()).toHaveLength(2);
    expect(presence()[1]).toEqual({ type: "presence_update", payload: { status: "online", context: {} } });
    expect(pm.isTyping).toBe(false);
  });

  it("sends nothing when the state does not change", async () => {
    const pm = await setup();
    pm.setStatus("online"); // the gateway already announced online
    pm.setContext({});
    await vi.advanceTimersByTimeAsync(5000);
    expect(presence()).toEqual([]);
    pm.setStatus("busy");
    pm.setStatus("online"); // net no change within the debounce window
    await vi.advanceTimersByTimeAsync(5000);
    expect(presence()).toEqual([]);
  });

  it("coalesces rapid changes: at most one update per minIntervalMs, latest wins", async () => {
    const pm = await setup({ minIntervalMs: 1000, debounceMs: 50 });
    pm.setStatus("busy");
    await vi.advanceTimersByTimeAsync(50);
    expect(presence().map((m) => m.payload.status)).toEqual(["busy"]);
    pm.setStatus("away");
    await vi.advanceTimersByTimeAsync(100);
    pm.setStatus("in_meeting");
    await vi.advanceTimersByTimeAsync(100);
    pm.setStatus("coding");
    await vi.advanceTimersByTimeAsync(700);
    expect(presence()).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(100);
    expect(presence().map((m) => m.payload.status)).toEqual(["busy", "coding"]);
  });

  it("cursor moves while editing cost one update per interval, not one per move", async () => {
    const pm = await setup({ minIntervalMs: 1000 });
    for (let pos = 0; pos < 100; pos++) {
      pm.startEditing("doc_1", "p5", pos);
      await vi.advanceTimersByTimeAsync(30);
    }
    await vi.advanceTimersByTimeAsync(1000);
    const n = presence().length;
    expect(n).toBeGreaterThanOrEqual(3);
    expect(n).toBeLessThanOrEqual(5);
    expect(presence()[n - 1]!.payload).toEqual({ status: "editing", context: { documentId: "doc_1", section: "p5", cursorPosition: 99 } });
    pm.stopEditing("doc_1");
    await vi.advanceTimersByTimeAsync(1000);
    expect(presence()[presence().length - 1]!.payload).toEqual({ status: "viewing", context: { documentId: "doc_1" } });
  });

  it("batchUpdate sends only the resulting state", async () => {
    const pm = await setup();
    pm.batchUpdate([{ status: "away" }, { status: "busy", context: { room: "a" } }, { status: "coding", context: { file: "x.ts" } }]);
    await vi.advanceTimersByTimeAsync(2000);
    expect(presence()).toEqual([{ type: "presence_update", payload: { status: "coding", context: { file: "x.ts" } } }]);
  });

  it("flush() sends at once, bypassing the interval", async () => {
    const pm = await setup();
    pm.setStatus("busy");
    pm.flush();
    expect(presence()).toHaveLength(1);
  });

  it("stateKey ignores key order", () => {
    expect(stateKey({ status: "a", context: { x: 1, y: { b: 2, a: 1 } } })).toBe(
      stateKey({ status: "a", context: { y: { a: 1, b: 2 }, x: 1 } }),
    );
  });
});

describe("PresenceManager: targeted typing", () => {
  it("typing to one user goes to that user only, and so does the stop", async () => {
    const pm = await setup();
    pm.typing("dm-7", 7);
    await vi.advanceTimersByTimeAsync(100);
    expect(presence()).toEqual([
      { type: "presence_update", targetUserId: 7, payload: { status: "typing", context: { chatId: "dm-7" } } },
    ]);
    await vi.advanceTimersByTimeAsync(1000);
    pm.stopTyping();
    await vi.advanceTimersByTimeAsync(100);
    expect(presence()[1]).toEqual({ type: "presence_update", targetUserId: 7, payload: { status: "online", context: {} } });
    expect(presence()).toHaveLength(2); // no broadcast: everyone else never saw typing
  });

  it("a broadcast change while typing to a user re-sends the typing to that user", async () => {
    const pm = await setup({ minIntervalMs: 0 });
    pm.typing("dm-7", 7);
    await vi.advanceTimersByTimeAsync(100);
    pm.setStatus("busy");
    await vi.advanceTimersByTimeAsync(100);
    expect(presence().map((m) => [m.targetUserId, m.payload.status])).toEqual([
      [7, "typing"],
      [undefined, "busy"],
      [7, "typing"],
    ]);
  });
});

describe("PresenceManager: privacy settings filter what is sent", () => {
  it("showLocation false strips the location; showActivity false hides typing", async () => {
    const pm = await setup({ minIntervalMs: 0, settings: { showLocation: false, showActivity: false } });
    pm.updateLocation("/inbox", "unread");
    pm.setContext({ activity: "reading", theme: "dark" });
    await vi.advanceTimersByTimeAsync(100);
    expect(presence()).toEqual([{ type: "presence_update", payload: { status: "online", context: { theme: "dark" } } }]);
    pm.typing("c");
    await vi.advanceTimersByTimeAsync(100);
    expect(presence()).toHaveLength(1);
    pm.updateSettings({ showLocation: true });
    await vi.advanceTimersByTimeAsync(100);
    expect(presence()[1]!.payload).toEqual({
      status: "online",
      context: { theme: "dark", location: { page: "/inbox", section: "unread" } },
    });
  });

  it("showOnlineStatus false never reveals away/busy", async () => {
    const pm = await setup({ minIntervalMs: 0, settings: { showOnlineStatus: false } });
    pm.setStatus("busy");
    await vi.advanceTimersByTimeAsync(100);
    expect(presence()).toEqual([]);
    pm.typing("c");
    await vi.advanceTimersByTimeAsync(100);
    expect(presence().map((m) => m.payload.status)).toEqual(["typing"]);
  });

  it("enabled false sends nothing, and disabling clears what others saw", async () => {
    const pm = await setup({ minIntervalMs: 0 });
    pm.typing("c", 5);
    pm.setStatus("busy");
    await vi.advanceTimersByTimeAsync(100);
    expect(presence()).toHaveLength(2);
    pm.updateSettings({ enabled: false });
    await vi.advanceTimersByTimeAsync(100);
    const after = presence().slice(2);
    expect(after).toEqual([{ type: "presence_update", payload: { status: "online", context: {} } }]);
    pm.setStatus("away");
    pm.typing("d", 6);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(presence()).toHaveLength(3);
  });

  it("allowedUsers turns updates into targeted ones for those users only", async () => {
    const pm = await setup({ minIntervalMs: 0, settings: { allowedUsers: [2, 3] } });
    pm.setStatus("busy");
    await vi.advanceTimersByTimeAsync(100);
    expect(presence().map((m) => [m.targetUserId, m.payload.status])).toEqual([
      [2, "busy"],
      [3, "busy"],
    ]);
    pm.typing("c", 9); // 9 may not see me
    await vi.advanceTimersByTimeAsync(100);
    expect(presence()).toHaveLength(2);
  });
});

describe("PresenceManager: visibility, inactivity, heartbeat, reconnect", () => {
  it("a hidden tab is away, visible again is online", async () => {
    const doc = new FakeTarget();
    const pm = await setup({ minIntervalMs: 0, environment: { document: doc } });
    doc.hidden = true;
    doc.fire("visibilitychange");
    await vi.advanceTimersByTimeAsync(100);
    doc.hidden = false;
    doc.fire("visibilitychange");
    await vi.advanceTimersByTimeAsync(100);
    expect(presence().map((m) => m.payload.status)).toEqual(["away", "online"]);
    pm.destroy();
    expect(doc.count()).toBe(0);
  });

  it("no activity for idleTimeoutMs is away; activity brings online back", async () => {
    const doc = new FakeTarget();
    await setup({ minIntervalMs: 0, idleTimeoutMs: 60_000, environment: { document: doc, activityTarget: doc } });
    await vi.advanceTimersByTimeAsync(30_000);
    doc.fire("mousemove"); // pushes the deadline back
    await vi.advanceTimersByTimeAsync(59_000);
    expect(presence()).toEqual([]);
    await vi.advanceTimersByTimeAsync(1_100);
    expect(presence().map((m) => m.payload.status)).toEqual(["away"]);
    for (let i = 0; i < 100; i++) doc.fire("mousemove");
    await vi.advanceTimersByTimeAsync(100);
    expect(presence().map((m) => m.payload.status)).toEqual(["away", "online"]);
    expect(vi.getTimerCount()).toBeLessThanOrEqual(3); // one idle timer, not one per event
  });

  it("busy is not overridden by auto-away", async () => {
    const doc = new FakeTarget();
    const pm = await setup({ minIntervalMs: 0, environment: { document: doc } });
    pm.setStatus("busy");
    await vi.advanceTimersByTimeAsync(100);
    doc.hidden = true;
    doc.fire("visibilitychange");
    await vi.advanceTimersByTimeAsync(100);
    expect(presence().map((m) => m.payload.status)).toEqual(["busy"]);
  });

  it("heartbeat re-sends the state only after a quiet interval", async () => {
    const pm = await setup({ heartbeatIntervalMs: 30_000 });
    pm.setStatus("busy");
    await vi.advanceTimersByTimeAsync(29_000);
    expect(presence()).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(31_000);
    expect(presence().map((m) => m.payload.status)).toEqual(["busy", "busy"]);
  });

  it("re-sends the state after a reconnect (the gateway announced a plain online)", async () => {
    const pm = await setup({ minIntervalMs: 0 });
    pm.setStatus("busy");
    pm.updateLocation("/docs");
    await vi.advanceTimersByTimeAsync(100);
    expect(presence()).toHaveLength(1);
    ws.serverClose(1006);
    pm.setStatus("in_meeting"); // while offline: nothing sent, nothing thrown
    await vi.advanceTimersByTimeAsync(20);
    const ws2 = FakeWebSocket.last;
    expect(ws2).not.toBe(ws);
    ws2.open();
    await vi.advanceTimersByTimeAsync(100);
    expect(ws2.messages).toEqual([
      { type: "presence_update", payload: { status: "in_meeting", context: { location: { page: "/docs" } } } },
    ]);
  });

  it("works in Node with no document at all", async () => {
    client = new WebSocketClient({ url: "ws://gw/ws", WebSocket: FakeWebSocket });
    const pm = new PresenceManager(client);
    pm.typing("x");
    pm.destroy();
    expect(vi.getTimerCount()).toBe(0);
  });
});

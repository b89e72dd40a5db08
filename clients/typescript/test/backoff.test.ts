import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { backoffDelay, DEFAULT_BACKOFF, WebSocketClient, type ReconnectInfo } from "../src/index.js";
import { FakeWebSocket, openClient, sequence, settle } from "./fake-socket.js";

describe("backoffDelay", () => {
  it("doubles from the initial delay up to the cap, without jitter", () => {
    const opts = { initialDelayMs: 100, maxDelayMs: 2000, multiplier: 2, jitter: 0 };
    const delays = [0, 1, 2, 3, 4, 5, 6, 20, 2000].map((a) => backoffDelay(a, opts, () => 0.3));
    expect(delays).toEqual([100, 200, 400, 800, 1600, 2000, 2000, 2000, 2000]);
  });

  it("draws jitter within [base*(1-jitter), base] and never above the cap", () => {
    const opts = { ...DEFAULT_BACKOFF }; // 500ms, x2, cap 30s, jitter 0.5
    expect(backoffDelay(0, opts, () => 0)).toBe(250);
    expect(backoffDelay(0, opts, () => 0.5)).toBe(375);
    expect(backoffDelay(0, opts, () => 0.999999)).toBe(500);
    for (let attempt = 0; attempt < 40; attempt++) {
      for (const r of [0, 0.25, 0.5, 0.75, 0.9999]) {
        const d = backoffDelay(attempt, opts, () => r);
        const base = Math.min(30_000, 500 * 2 ** attempt);
        expect(d).toBeGreaterThanOrEqual(base / 2 - 1);
        expect(d).toBeLessThanOrEqual(Math.min(base, 30_000));
      }
    }
  });

  it("tolerates a random source out of range", () => {
    const opts = { initialDelayMs: 1000, maxDelayMs: 10_000, multiplier: 2, jitter: 0.5 };
    expect(backoffDelay(0, opts, () => 5)).toBe(1000);
    expect(backoffDelay(0, opts, () => -1)).toBe(500);
  });
});

describe("client reconnect schedule", () => {
  beforeEach(() => {
    vi.useFakeTimers();
    FakeWebSocket.reset();
  });
  afterEach(() => vi.useRealTimers());

  it("follows the backoff schedule with injected randomness, and resets after a successful open", async () => {
    const seen: ReconnectInfo[] = [];
    const client = new WebSocketClient({
      url: "ws://gw/ws",
      token: "t",
      WebSocket: FakeWebSocket,
      random: sequence(0.5),
      reconnect: { initialDelayMs: 1000, maxDelayMs: 8000, multiplier: 2, jitter: 0.5 },
      callbacks: { onReconnecting: (i) => seen.push(i) },
    });
    await openClient(client);
    FakeWebSocket.last.serverClose(1006);
    // Every retry fails at once: 1000*0.75, 2000*0.75, 4000*0.75, 8000*0.75, then capped.
    for (let i = 0; i < 6; i++) {
      const before = FakeWebSocket.instances.length;
      const delay = seen[seen.length - 1]!.delayMs;
      await vi.advanceTimersByTimeAsync(delay - 1);
      expect(FakeWebSocket.instances.length).toBe(before);
      await vi.advanceTimersByTimeAsync(1);
      await settle();
      expect(FakeWebSocket.instances.length).toBe(before + 1);
      FakeWebSocket.last.serverClose(1006);
    }
    expect(seen.map((s) => s.delayMs)).toEqual([750, 1500, 3000, 6000, 6000, 6000, 6000]);
    expect(seen.map((s) => s.attempt)).toEqual([1, 2, 3, 4, 5, 6, 7]);

    // A successful open resets the schedule.
    await vi.advanceTimersByTimeAsync(6000);
    await settle();
    FakeWebSocket.last.open();
    expect(client.state).toBe("open");
    FakeWebSocket.last.serverClose(1001);
    expect(seen[seen.length - 1]).toEqual({ attempt: 1, delayMs: 750 });
    client.close();
  });

  it("gives up after maxAttempts", async () => {
    const giveUp = vi.fn();
    const client = new WebSocketClient({
      url: "ws://gw/ws",
      WebSocket: FakeWebSocket,
      random: () => 0,
      reconnect: { initialDelayMs: 10, maxAttempts: 2 },
      callbacks: { onGiveUp: giveUp },
    });
    const connected = client.connect().catch((e: unknown) => e);
    await settle();
    FakeWebSocket.last.serverClose(1006);
    await vi.advanceTimersByTimeAsync(100);
    FakeWebSocket.last.serverClose(1006);
    await vi.advanceTimersByTimeAsync(100);
    FakeWebSocket.last.serverClose(1006);
    await vi.advanceTimersByTimeAsync(1000);
    expect(FakeWebSocket.instances.length).toBe(3);
    expect(giveUp).toHaveBeenCalledWith({ reason: "max_attempts", code: 1006 });
    expect(client.state).toBe("closed");
    expect(String(await connected)).toContain("max_attempts");
  });

  it("aborts a connect attempt that never opens and retries", async () => {
    const client = new WebSocketClient({
      url: "ws://gw/ws",
      WebSocket: FakeWebSocket,
      random: () => 0,
      connectTimeoutMs: 5000,
      reconnect: { initialDelayMs: 100, jitter: 0 },
    });
    void client.connect();
    await settle();
    const first = FakeWebSocket.last;
    await vi.advanceTimersByTimeAsync(5000);
    expect(first.closedWith).toBeDefined();
    await vi.advanceTimersByTimeAsync(100);
    expect(FakeWebSocket.instances.length).toBe(2);
    client.close();
  });
});

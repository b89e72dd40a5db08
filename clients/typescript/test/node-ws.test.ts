// The SDK against a real WebSocket stack in Node: the `ws` package on both sides, over loopback.
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import WebSocket, { WebSocketServer } from "ws";
import { WebSocketClient, type GiveUpInfo } from "../src/index.js";

let server: WebSocketServer | undefined;
afterEach(async () => {
  await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  server = undefined;
});

function startServer(onConnection: (socket: WebSocket, headers: Record<string, string | string[] | undefined>) => void): Promise<string> {
  return new Promise((resolve) => {
    server = new WebSocketServer({
      host: "127.0.0.1",
      port: 0,
      // The gateway selects customws.v1 and never echoes the token entry.
      handleProtocols: (protocols) => (protocols.has("customws.v1") ? "customws.v1" : false),
    });
    server.on("connection", (socket, req) => onConnection(socket, req.headers));
    server.on("listening", () => resolve(`ws://127.0.0.1:${(server!.address() as AddressInfo).port}/ws`));
  });
}

describe("with the ws package in Node", () => {
  it("authenticates by subprotocol and header, gets an ack, and stops on 4000", async () => {
    let headers: Record<string, string | string[] | undefined> = {};
    const url = await startServer((socket, h) => {
      headers = h;
      socket.on("message", (raw) => {
        const msg = JSON.parse(String(raw)) as { pid: string; type: string };
        socket.send(JSON.stringify({ type: "server_ack", payload: { acknowledgedPid: msg.pid, status: "delivered" } }));
        setTimeout(() => socket.close(4000, "replaced"), 10);
      });
    });
    const gaveUp = new Promise<GiveUpInfo>((resolve) => {
      const client = new WebSocketClient({ url, token: "abc.def.ghi", WebSocket, authHeader: true, callbacks: { onGiveUp: resolve } });
      void client.connect().then(async () => {
        expect(client.isOpen).toBe(true);
        const ack = await client.sendMessageWithAck({ type: "data_request", payload: { text: "hi" } });
        expect(ack.status).toBe("delivered");
      });
    });
    expect(await gaveUp).toEqual({ reason: "replaced", code: 4000 });
    // `ws` joins the list without a space (browsers use ", "): the server must split on "," and trim.
    const offered = String(headers["sec-websocket-protocol"]).split(",").map((p) => p.trim());
    expect(offered).toEqual(["customws.v1", "bearer.abc.def.ghi"]);
    expect(headers["authorization"]).toBe("Bearer abc.def.ghi");
  });

  it("reconnects on its own after the server drops it", async () => {
    let connections = 0;
    const url = await startServer((socket) => {
      connections++;
      if (connections === 1) setTimeout(() => socket.terminate(), 10);
    });
    const client = new WebSocketClient({ url, WebSocket, reconnect: { initialDelayMs: 20, maxDelayMs: 50 } });
    const reopened = new Promise<boolean>((resolve) => client.on("open", (i) => i.reconnected && resolve(true)));
    await client.connect();
    expect(await reopened).toBe(true);
    expect(connections).toBe(2);
    client.close();
  });
});

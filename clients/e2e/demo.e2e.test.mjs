// Browser end-to-end tests: Debian's chromium, driven by playwright-core, opens the demo
// page served by the real `customws serve --dev` binary as alice and as bob (two browser
// contexts) and checks presence, typing, private messages with acks, broadcast, recovery
// after the server is killed and restarted, and offline after a tab is closed.
//
// Environment:
//   CUSTOMWS_BIN       the binary (default ../../target/release/customws from this folder)
//   CHROMIUM_BIN       the browser (default /usr/bin/chromium)
//   E2E_ARTIFACTS_DIR  where screenshots go (default <repo>/target/e2e)
//   E2E_STATIC_PAGE=1  serve clients/demo/dist/index.html from the test itself instead of
//                      the binary's GET / (for a binary built without the embedded page)

import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createNetServer } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "..", "..");
const BIN = resolve(here, process.env.CUSTOMWS_BIN ?? "../../target/release/customws");
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const ARTIFACTS = resolve(process.env.E2E_ARTIFACTS_DIR ?? join(repo, "target", "e2e"));
const DIST = join(repo, "clients", "demo", "dist", "index.html");
const STATIC_PAGE = process.env.E2E_STATIC_PAGE === "1";
// Fixed so that a restarted server accepts the tokens the first one printed.
const SECRET = "customws-e2e-fixed-secret-0123456789abcdef";
const WAIT = 10_000;

/** A port nobody listens on right now. */
function freePort() {
  return new Promise((ok, fail) => {
    const s = createNetServer();
    s.once("error", fail);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Starts `customws serve --dev` and resolves with its tokens once /healthz answers. */
async function startServer(port) {
  const proc = spawn(
    BIN,
    ["serve", "--dev", "--jwt-secret", SECRET, "--listen", `127.0.0.1:${port}`, "--admin-listen", "off", "--shards", "2"],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const server = { proc, port, out: "", err: "", exited: false, tokens: {} };
  proc.stdout.setEncoding("utf8").on("data", (d) => (server.out += d));
  proc.stderr.setEncoding("utf8").on("data", (d) => (server.err += d));
  server.exit = new Promise((r) =>
    proc.once("exit", (code, signal) => {
      server.exited = true;
      r({ code, signal });
    }),
  );
  const deadline = Date.now() + WAIT;
  for (;;) {
    const alice = /^\s*alice \(user 1\): (\S+)\s*$/m.exec(server.out);
    const bob = /^\s*bob\s+\(user 2\): (\S+)\s*$/m.exec(server.out);
    if (alice && bob) {
      server.tokens = { alice: alice[1], bob: bob[1] };
      try {
        const r = await fetch(`http://127.0.0.1:${port}/healthz`);
        if (r.status === 200) return server;
      } catch {
        // not listening yet
      }
    }
    if (server.exited) throw new Error(`customws exited at start:\n${server.out}\n${server.err}`);
    if (Date.now() > deadline) {
      proc.kill("SIGKILL");
      throw new Error(`customws did not start within ${WAIT} ms:\n${server.out}\n${server.err}`);
    }
    await sleep(50);
  }
}

async function stopServer(server, signal = "SIGTERM") {
  if (!server || server.exited) return;
  server.proc.kill(signal);
  const timer = setTimeout(() => server.proc.kill("SIGKILL"), 5_000);
  await server.exit;
  clearTimeout(timer);
}

/** Serves the committed page from the test (E2E_STATIC_PAGE=1). */
function startStaticServer() {
  const html = readFileSync(DIST);
  const http = createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html; charset=utf-8", "cache-control": "no-store" });
    res.end(html);
  });
  return new Promise((ok) => http.listen(0, "127.0.0.1", () => ok(http)));
}

describe("demo page in chromium against customws serve --dev", { timeout: 110_000 }, () => {
  let server;
  let port;
  let browser;
  let pageUrl;
  let staticServer;
  const pages = {};
  const socketUrls = [];
  const presenceSent = { alice: 0, bob: 0 };
  const pageErrors = [];
  const consoleErrors = [];

  async function openAs(user) {
    const context = await browser.newContext({ viewport: { width: 1040, height: 620 } });
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT);
    page.on("pageerror", (e) => pageErrors.push(`${user}: ${e.message}`));
    // Console errors are expected while the server is down (failed WebSocket connects): shown, not failed on.
    page.on("console", (m) => {
      if (m.type() === "error") consoleErrors.push(`${user}: ${m.text()}`);
    });
    page.on("websocket", (ws) => {
      socketUrls.push(ws.url());
      ws.on("framesent", ({ payload }) => {
        if (typeof payload === "string" && payload.includes('"presence_update"')) presenceSent[user] += 1;
      });
    });
    const sep = pageUrl.includes("?") ? "&" : "?";
    await page.goto(`${pageUrl}${sep}token=${encodeURIComponent(server.tokens[user])}`);
    pages[user] = page;
    return page;
  }

  // A test process killed by its timeout must not leave the server behind.
  process.once("exit", () => {
    if (server && !server.exited) server.proc.kill("SIGKILL");
  });

  const user = (page, id, status) => page.locator(`#users li[data-user-id="${id}"][data-status="${status}"]`);
  const connected = (page) => page.locator('#conn[data-state="open"]').waitFor();

  before(async () => {
    assert.ok(existsSync(BIN), `customws binary not found at ${BIN} (build it: cargo build --release, or set CUSTOMWS_BIN)`);
    assert.ok(existsSync(CHROMIUM), `chromium not found at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_BIN)`);
    port = await freePort();
    server = await startServer(port);
    if (STATIC_PAGE) {
      staticServer = await startStaticServer();
      pageUrl = `http://127.0.0.1:${staticServer.address().port}/?ws=${encodeURIComponent(`ws://127.0.0.1:${port}/ws`)}`;
    } else {
      pageUrl = `http://127.0.0.1:${port}/`;
    }
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: 30_000,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
  });

  after(async () => {
    await browser?.close().catch(() => {});
    await stopServer(server);
    staticServer?.close();
    if (consoleErrors.length > 0) console.log(`browser console errors:\n  ${consoleErrors.join("\n  ")}`);
  });

  test("GET / serves the committed demo page", { skip: STATIC_PAGE && "E2E_STATIC_PAGE=1" }, async () => {
    const r = await fetch(`http://127.0.0.1:${port}/`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type") ?? "", /^text\/html/);
    const body = Buffer.from(await r.arrayBuffer());
    assert.ok(body.equals(readFileSync(DIST)), "the binary embeds a different page than clients/demo/dist/index.html: rebuild it");
  });

  test("alice and bob connect and each sees the other online", { timeout: 30_000 }, async () => {
    const a = await openAs("alice");
    const b = await openAs("bob");
    await Promise.all([connected(a), connected(b)]);
    await user(a, 2, "online").waitFor();
    await user(b, 1, "online").waitFor();
    assert.equal(await a.locator("#me").textContent(), "alice (user 1)");
    // The token travels in the subprotocol list, never in the WebSocket URL; ?token= left the address bar.
    for (const url of socketUrls) assert.ok(!url.includes("token") && !url.includes(server.tokens.alice), url);
    assert.ok(!a.url().includes("token="), a.url());
  });

  test("the user picker: paste a token, switch user, pick it again", { timeout: 30_000 }, async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT);
    page.on("pageerror", (e) => pageErrors.push(`picker: ${e.message}`));
    await page.goto(pageUrl);
    await page.locator("#login").waitFor();
    await page.locator("#token-input").fill(server.tokens.alice);
    await page.locator('#login-form button[type="submit"]').click();
    await connected(page);
    assert.equal(await page.locator("#me").textContent(), "alice (user 1)");
    await user(page, 2, "online").waitFor();
    await page.locator("#logout").click();
    await page.locator('#conn[data-state="idle"]').waitFor();
    await page.locator("#known button", { hasText: "alice (user 1)" }).click();
    await connected(page);
    await context.close();
    // alice still has her first tab: closing the second one must not make her offline.
    await sleep(300);
    assert.equal(await user(pages.bob, 1, "online").count(), 1);
  });

  test("bob's typing shows on alice's page, with few presence updates", { timeout: 30_000 }, async () => {
    const a = pages.alice;
    const b = pages.bob;
    const before = presenceSent.bob;
    await b.locator("#peer").selectOption("1");
    await b.locator("#text").pressSequentially("hello alice, this is bob", { delay: 15 });
    await a.locator("#typing", { hasText: "bob is typing…" }).waitFor();
    await user(a, 2, "typing").waitFor();
    // 24 keystrokes: the PresenceManager sends one "typing", not one per key.
    const sent = presenceSent.bob - before;
    assert.ok(sent >= 1 && sent <= 2, `bob sent ${sent} presence updates while typing`);
  });

  test("a private message is delivered, acked, and ends the typing indicator", { timeout: 30_000 }, async () => {
    const a = pages.alice;
    const b = pages.bob;
    await b.locator("#text").press("Enter");
    const out = b.locator('#messages li[data-direction="out"][data-kind="private"]', { hasText: "hello alice, this is bob" });
    await out.and(b.locator('[data-ack="delivered"]')).waitFor();
    assert.match(await out.locator(".ack").textContent(), /✓ delivered/);
    const got = a.locator('#messages li[data-direction="in"][data-kind="private"]', { hasText: "hello alice, this is bob" });
    await got.waitFor();
    assert.equal(await got.getAttribute("data-from"), "2");
    assert.equal(await got.locator(".who").textContent(), "bob → you");
    await a.locator("#typing:empty").waitFor();
    await user(a, 2, "online").waitFor();
  });

  test("a broadcast reaches bob and is acked", { timeout: 30_000 }, async () => {
    const a = pages.alice;
    const b = pages.bob;
    await a.locator("#text").fill("hello everyone");
    await a.locator("#broadcast").click();
    await b.locator('#messages li[data-direction="in"][data-kind="broadcast"]', { hasText: "hello everyone" }).waitFor();
    await a.locator('#messages li[data-direction="out"][data-kind="broadcast"][data-ack="delivered"]', { hasText: "hello everyone" }).waitFor();

    // A typing indicator in the picture: bob starts another message to alice.
    await b.locator("#text").pressSequentially("one more thing", { delay: 10 });
    await a.locator("#typing", { hasText: "bob is typing…" }).waitFor();
    mkdirSync(ARTIFACTS, { recursive: true });
    const shot = join(ARTIFACTS, "demo.png");
    await a.screenshot({ path: shot });
    await b.screenshot({ path: join(ARTIFACTS, "demo-bob.png") });
    console.log(`screenshot: ${shot}`);
    await b.locator("#text").fill("");
  });

  test("server killed and restarted: both pages reconnect by themselves and presence recovers", { timeout: 45_000 }, async () => {
    const a = pages.alice;
    const b = pages.bob;
    const started = Date.now();
    await stopServer(server, "SIGKILL");
    await Promise.all([
      a.locator('#conn[data-state="reconnecting"]').waitFor(),
      b.locator('#conn[data-state="reconnecting"]').waitFor(),
    ]);
    await sleep(1_000);
    server = await startServer(port);
    await Promise.all([connected(a), connected(b)]);
    await user(a, 2, "online").waitFor();
    await user(b, 1, "online").waitFor();
    console.log(`reconnected and presence recovered ${Date.now() - started} ms after the kill`);
    // And the connection is really usable: a message with its ack.
    await a.locator("#peer").selectOption("2");
    await a.locator("#text").fill("still there?");
    await a.locator("#text").press("Enter");
    await a.locator('#messages li[data-direction="out"][data-ack="delivered"]', { hasText: "still there?" }).waitFor();
    await b.locator('#messages li[data-direction="in"]', { hasText: "still there?" }).waitFor();
  });

  test("bob's tab closed: alice sees bob offline", { timeout: 30_000 }, async () => {
    const a = pages.alice;
    await pages.bob.close();
    await user(a, 2, "offline").waitFor();
    assert.equal(await a.locator('#peer option[value="2"]').count(), 0);
  });

  test("no uncaught errors in the pages", () => {
    assert.deepEqual(pageErrors, []);
  });
});

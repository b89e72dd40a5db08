// The customws demo page: pick a user (a JWT), see who is online and what they are
// doing, chat privately with "typing…" indicators, broadcast, and see delivery acks.
// Plain DOM on top of the SDK; `build.mjs` bundles it into one self-contained HTML file
// that `customws serve --dev` serves at `/`.

import {
  ChatSystem,
  ConnectionLostError,
  PresenceManager,
  ServerError,
  TimeoutError,
  WebSocketClient,
  type ChatMessage,
  type JsonObject,
  type PresenceInfo,
} from "../../typescript/src/index.js";

/** The tab's token: survives a reload of this tab, never shared with other tabs. */
const SESSION_KEY = "customws.demo.token";
/** Tokens picked before in this browser, for the user picker (dev tokens only). */
const KNOWN_KEY = "customws.demo.knownTokens";

interface Claims {
  sub: number;
  name: string;
  exp: number | undefined;
}

interface UserView {
  userId: number;
  username: string;
  status: string;
  context: JsonObject | null;
}

function $<T extends HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} missing from the page`);
  return el as T;
}

function el<K extends keyof HTMLElementTagNameMap>(tag: K, className?: string, text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Reads the claims the page needs. The signature is the server's business, not the page's. */
function decodeClaims(token: string): Claims | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json: unknown = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    if (typeof json !== "object" || json === null) return null;
    const c = json as Record<string, unknown>;
    const sub = typeof c.sub === "string" ? Number(c.sub) : c.sub;
    if (typeof sub !== "number" || !Number.isSafeInteger(sub) || sub <= 0) return null;
    return {
      sub,
      name: typeof c.name === "string" && c.name !== "" ? c.name : `user ${sub}`,
      exp: typeof c.exp === "number" ? c.exp : undefined,
    };
  } catch {
    return null;
  }
}

function isExpired(claims: Claims): boolean {
  return claims.exp !== undefined && claims.exp * 1000 <= Date.now();
}

function knownTokens(): string[] {
  try {
    const list: unknown = JSON.parse(localStorage.getItem(KNOWN_KEY) ?? "[]");
    if (!Array.isArray(list)) return [];
    return list.filter((t): t is string => typeof t === "string" && decodeClaims(t) !== null && !isExpired(decodeClaims(t)!));
  } catch {
    return [];
  }
}

function rememberToken(token: string, claims: Claims): void {
  const others = knownTokens().filter((t) => decodeClaims(t)?.sub !== claims.sub);
  try {
    localStorage.setItem(KNOWN_KEY, JSON.stringify([token, ...others].slice(0, 8)));
  } catch {
    // storage disabled: the picker simply stays empty
  }
}

function timeOf(rfc3339: string): string {
  const d = new Date(rfc3339);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** The private chat between two users, as the typing context names it. */
function dmId(a: number, b: number): string {
  return `dm:${Math.min(a, b)}-${Math.max(a, b)}`;
}

/**
 * The status to show for `u`. `get_presence` reports a user's latest update even when it was
 * sent to someone else, so typing in another conversation is shown as plain `online`.
 */
function shownStatus(u: UserView, me: number): string {
  if (u.status !== "typing" || u.userId === me) return u.status;
  const chat = u.context?.chatId;
  return chat === undefined || chat === dmId(u.userId, me) ? "typing" : "online";
}

/** What a user is doing, in a few words. */
function activityText(u: UserView, status: string): string {
  const ctx = u.context ?? {};
  switch (status) {
    case "typing":
      return "typing…";
    case "editing":
      return typeof ctx.documentId === "string" ? `editing ${ctx.documentId}` : "editing";
    case "viewing":
      return typeof ctx.documentId === "string" ? `viewing ${ctx.documentId}` : "viewing";
    default: {
      const loc = ctx.location;
      const page = typeof loc === "object" && loc !== null && !Array.isArray(loc) ? (loc as JsonObject).page : undefined;
      return typeof page === "string" ? `${status} · ${page}` : status;
    }
  }
}

function failureText(error: unknown): string {
  if (error instanceof ServerError) return error.code === 404 ? "✗ not connected (404)" : `✗ ${error.code} ${error.message}`;
  if (error instanceof TimeoutError) return "✗ no ack (timeout)";
  if (error instanceof ConnectionLostError) return "✗ connection lost before the ack";
  return "✗ not sent";
}

// ---------------------------------------------------------------------------- login

function showLogin(message = ""): void {
  $("app").classList.add("hidden");
  $("logout").classList.add("hidden");
  $("login").classList.remove("hidden");
  $("me").textContent = "";
  $("login-error").textContent = message;
  const known = $("known");
  known.replaceChildren();
  for (const token of knownTokens()) {
    const claims = decodeClaims(token);
    if (!claims) continue;
    const button = el("button", "", `${claims.name} (user ${claims.sub})`);
    button.type = "button";
    button.addEventListener("click", () => start(token));
    known.append(button);
  }
  known.classList.toggle("hidden", known.childElementCount === 0);
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $<HTMLTextAreaElement>("token-input").value.trim();
  start(token);
});

// ---------------------------------------------------------------------------- session

let stop: (() => void) | undefined;

function start(token: string): void {
  const claims = decodeClaims(token);
  if (!claims) return showLogin("That is not a JWT with a numeric `sub`.");
  if (isExpired(claims)) return showLogin("That token has expired: restart `customws serve --dev` for fresh ones.");
  try {
    sessionStorage.setItem(SESSION_KEY, token);
  } catch {
    // a reload will ask again
  }
  rememberToken(token, claims);
  stop?.();
  stop = runSession(token, claims);
}

$("logout").addEventListener("click", () => {
  stop?.();
  stop = undefined;
  try {
    sessionStorage.removeItem(SESSION_KEY);
  } catch {
    // nothing stored
  }
  showLogin();
});

function runSession(token: string, me: Claims): () => void {
  $("login").classList.add("hidden");
  $("app").classList.remove("hidden");
  $("logout").classList.remove("hidden");
  $("me").textContent = `${me.name} (user ${me.sub})`;
  const conn = $("conn");
  const usersList = $("users");
  const messages = $("messages");
  const typingLine = $("typing");
  const peerSelect = $<HTMLSelectElement>("peer");
  const textInput = $<HTMLInputElement>("text");
  const sendButton = $<HTMLButtonElement>("send");
  const broadcastButton = $<HTMLButtonElement>("broadcast");
  const statusSelect = $<HTMLSelectElement>("me-status");
  messages.replaceChildren();
  statusSelect.value = "online";

  const params = new URLSearchParams(location.search);
  const url = params.get("ws") ?? `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
  const client = new WebSocketClient({ url, token, reconnect: { maxDelayMs: 10_000 } });
  const presence = new PresenceManager(client, { typingTimeoutMs: 3000 });
  const chat = new ChatSystem(client);
  const users = new Map<number, UserView>();
  const cleanups: Array<() => void> = [];

  // ------------------------------------------------------------ connection status
  const setConn = (state: string, text: string) => {
    conn.dataset.state = state;
    conn.textContent = text;
    const open = state === "open";
    sendButton.disabled = !open || peerSelect.value === "";
    broadcastButton.disabled = !open;
  };
  setConn("connecting", "connecting…");
  cleanups.push(
    client.on("stateChange", (state) => {
      if (state === "open") setConn("open", "connected");
      else if (state === "connecting") setConn("connecting", "connecting…");
    }),
    client.on("reconnecting", ({ attempt, delayMs }) => {
      setConn("reconnecting", `reconnecting (attempt ${attempt}, in ${(delayMs / 1000).toFixed(1)} s)…`);
    }),
    client.on("close", ({ code, willReconnect }) => {
      if (!willReconnect) return;
      system(`connection lost (${code}), reconnecting…`);
      for (const u of users.values()) if (u.userId !== me.sub) u.status = "unknown";
      renderUsers();
    }),
    client.on("open", ({ reconnected }) => {
      if (reconnected) system("reconnected");
      void refreshPresence();
    }),
    client.on("giveUp", ({ reason, code }) => {
      const why: Record<string, string> = {
        replaced: "this user connected elsewhere (4000)",
        policy: "closed by the server (1008)",
        token_expired: "token expired: pick a user again",
        max_attempts: "gave up reconnecting",
        reconnect_disabled: "connection closed",
      };
      setConn("closed", `disconnected: ${why[reason] ?? reason}${code !== undefined && reason === "max_attempts" ? ` (${code})` : ""}`);
    }),
  );

  // ------------------------------------------------------------ presence
  const upsert = (info: Pick<PresenceInfo, "userId" | "username" | "status" | "context">) => {
    users.set(info.userId, { userId: info.userId, username: info.username, status: info.status, context: info.context });
  };

  async function refreshPresence(): Promise<void> {
    try {
      const { users: online } = await client.getPresence();
      const seen = new Set<number>();
      for (const u of online) {
        upsert(u);
        seen.add(u.userId);
      }
      for (const u of users.values()) if (!seen.has(u.userId)) u.status = "offline";
      renderUsers();
    } catch {
      // the next open asks again
    }
  }

  cleanups.push(
    client.on("presenceEvent", (m) => {
      const p = m.payload;
      if (!p || typeof p.userId !== "number") return;
      upsert({ userId: p.userId, username: p.username, status: p.status, context: p.context ?? null });
      renderUsers();
    }),
  );

  function renderUsers(): void {
    const sorted = [...users.values()].sort((a, b) => {
      if (a.userId === me.sub) return -1;
      if (b.userId === me.sub) return 1;
      const offA = a.status === "offline" ? 1 : 0;
      const offB = b.status === "offline" ? 1 : 0;
      return offA - offB || a.username.localeCompare(b.username) || a.userId - b.userId;
    });
    usersList.replaceChildren(
      ...sorted.map((u) => {
        const status = shownStatus(u, me.sub);
        const li = el("li");
        li.dataset.userId = String(u.userId);
        li.dataset.status = status;
        li.classList.toggle("selected", peerSelect.value === String(u.userId));
        li.append(el("span", "dot"), el("span", "name", u.userId === me.sub ? `${u.username} (you)` : u.username), el("span", "what", activityText(u, status)));
        if (u.userId !== me.sub) {
          li.title = `Chat with ${u.username}`;
          li.addEventListener("click", () => {
            if (u.status === "offline") return;
            peerSelect.value = String(u.userId);
            peerSelect.dispatchEvent(new Event("change"));
            textInput.focus();
          });
        }
        return li;
      }),
    );

    // Peers: every other user not known to be offline.
    const previous = peerSelect.value;
    const peers = sorted.filter((u) => u.userId !== me.sub && u.status !== "offline");
    peerSelect.replaceChildren(
      ...(peers.length === 0
        ? [Object.assign(el("option", "", "nobody else online"), { value: "" })]
        : peers.map((u) => Object.assign(el("option", "", `to ${u.username}`), { value: String(u.userId) }))),
    );
    if (peers.some((u) => String(u.userId) === previous)) peerSelect.value = previous;
    sendButton.disabled = !client.isOpen || peerSelect.value === "";

    const typing = sorted.filter((u) => u.userId !== me.sub && shownStatus(u, me.sub) === "typing");
    typingLine.dataset.userIds = typing.map((u) => u.userId).join(",");
    typingLine.textContent =
      typing.length === 0 ? "" : `${typing.map((u) => u.username).join(", ")} ${typing.length === 1 ? "is" : "are"} typing…`;
  }

  peerSelect.addEventListener("change", renderUsers);
  const onStatus = () => presence.setStatus(statusSelect.value);
  statusSelect.addEventListener("change", onStatus);

  // ------------------------------------------------------------ chat
  function system(text: string): void {
    const li = el("li", "system", text);
    li.dataset.kind = "system";
    append(li);
  }

  function append(li: HTMLElement): void {
    const atBottom = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 40;
    messages.append(li);
    if (atBottom) messages.scrollTop = messages.scrollHeight;
  }

  function line(direction: "in" | "out", kind: "private" | "broadcast", who: string, text: string, meta: string): HTMLElement {
    const li = el("li");
    li.dataset.direction = direction;
    li.dataset.kind = kind;
    li.append(el("span", "who", who), el("span", "text", text), el("span", "meta", meta));
    append(li);
    return li;
  }

  function outgoing(kind: "private" | "broadcast", who: string, text: string, send: () => Promise<{ status: string }>): void {
    const li = line("out", kind, who, text, `${timeOf(new Date().toISOString())} `);
    const ack = el("span", "ack", "sending…");
    li.querySelector(".meta")?.append(ack);
    li.dataset.ack = "pending";
    send().then(
      (a) => {
        li.dataset.ack = a.status === "delivered" ? "delivered" : a.status;
        ack.textContent = `✓ ${a.status}`;
      },
      (error: unknown) => {
        li.dataset.ack = "failed";
        ack.textContent = failureText(error);
      },
    );
  }

  cleanups.push(
    chat.onMessage((m: ChatMessage) => {
      const kind = m.messageType === "public" ? "broadcast" : "private";
      const li = line("in", kind, kind === "broadcast" ? `${m.senderName} → everyone` : `${m.senderName} → you`, m.text, timeOf(m.timestamp));
      li.dataset.from = String(m.senderId ?? "");
    }),
  );

  textInput.addEventListener("input", onInput);
  function onInput(): void {
    const peer = Number(peerSelect.value);
    if (!peer) return;
    if (textInput.value === "") presence.stopTyping();
    else presence.typing(dmId(peer, me.sub), peer);
  }

  const form = $<HTMLFormElement>("compose");
  const onSubmit = (event: Event) => {
    event.preventDefault();
    const text = textInput.value.trim();
    const peer = Number(peerSelect.value);
    if (!text || !peer || !client.isOpen) return;
    const name = users.get(peer)?.username ?? `user ${peer}`;
    presence.stopTyping();
    textInput.value = "";
    outgoing("private", `you → ${name}`, text, () => chat.sendPrivateMessage(peer, text));
  };
  const onBroadcast = () => {
    const text = textInput.value.trim();
    if (!text || !client.isOpen) return;
    presence.stopTyping();
    textInput.value = "";
    outgoing("broadcast", "you → everyone", text, () => chat.sendPublicMessage(text));
  };
  form.addEventListener("submit", onSubmit);
  broadcastButton.addEventListener("click", onBroadcast);

  const onOnline = () => client.reconnectNow();
  window.addEventListener("online", onOnline);

  renderUsers();
  client.connect().catch(() => {
    // giveUp already said why
  });

  return () => {
    for (const off of cleanups) off();
    textInput.removeEventListener("input", onInput);
    form.removeEventListener("submit", onSubmit);
    broadcastButton.removeEventListener("click", onBroadcast);
    peerSelect.removeEventListener("change", renderUsers);
    statusSelect.removeEventListener("change", onStatus);
    window.removeEventListener("online", onOnline);
    presence.destroy();
    client.close(1000, "switch user");
    setConn("idle", "not connected");
  };
}

// ---------------------------------------------------------------------------- boot

{
  // ?token= is for tests and links: keep it for this tab, then drop it from the address bar.
  const params = new URLSearchParams(location.search);
  const fromUrl = params.get("token");
  if (fromUrl) {
    params.delete("token");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
  }
  let stored: string | null = null;
  try {
    stored = sessionStorage.getItem(SESSION_KEY);
  } catch {
    // storage disabled
  }
  const token = fromUrl ?? stored;
  if (token) start(token);
  else showLogin();
}

import type { WebSocketClient } from "./client.js";
import type { JsonObject } from "./types.js";

/** The guide's privacy settings (section 10.8): they filter what is sent, never what is shown locally. */
export interface PresenceSettings {
  /** false: send nothing at all (a last neutral `online` clears what others saw). */
  enabled: boolean;
  /** false: never reveal away/busy/idle; others only ever see `online` (plus activity, if shown). */
  showOnlineStatus: boolean;
  /** false: typing/editing/viewing are not sent, nor a custom `context.activity`. */
  showActivity: boolean;
  /** false: `context.location` is not sent. */
  showLocation: boolean;
  /**
   * Whitelist of users who may see my presence. When set, updates go to each of them
   * as targeted `presence_update`s instead of one broadcast (at most `maxFanout`).
   * The gateway's automatic online/offline on connect/disconnect is outside the client's control.
   */
  allowedUsers: number[] | null;
}

export const DEFAULT_PRESENCE_SETTINGS: PresenceSettings = {
  enabled: true,
  showOnlineStatus: true,
  showActivity: true,
  showLocation: true,
  allowedUsers: null,
};

interface ListenerTarget {
  addEventListener(type: string, listener: () => void, options?: { passive?: boolean }): void;
  removeEventListener(type: string, listener: () => void): void;
}

/** The browser pieces the manager reads; injectable for tests, absent in Node. */
export interface PresenceEnvironment {
  /** For `visibilitychange` and `hidden` / `visibilityState`. Default: `globalThis.document`. */
  document?: (ListenerTarget & { hidden?: boolean; visibilityState?: string }) | undefined;
  /** Where user activity (pointer, keys, scroll, touch) is observed. Default: `globalThis.window`, else the document. */
  activityTarget?: ListenerTarget | undefined;
}

export interface PresenceManagerOptions {
  /** At most one update per destination per this interval; later changes coalesce (latest wins). Default 1000 ms. */
  minIntervalMs?: number;
  /** Wait this long after a change before sending, so bursts of calls produce one update. Default 50 ms. */
  debounceMs?: number;
  /** Typing stops on its own after this much time without `typing()` calls. Default 3000 ms. */
  typingTimeoutMs?: number;
  /**
   * Re-send the current state when nothing was sent for this long. Default 0 (off): the gateway
   * derives online/offline from connections and keeps them alive with its own pings; enable it
   * for servers that expire presence.
   */
  heartbeatIntervalMs?: number;
  /** No user activity for this long → `away` (browsers; 0 disables). Default 300 000 ms. */
  idleTimeoutMs?: number;
  /** Hidden tab → `away`. Default true (where a document exists). */
  trackVisibility?: boolean;
  /** Observe user activity for the idle timeout. Default true (where a document exists). */
  trackActivity?: boolean;
  /** Status used for hidden/idle. Default "away". */
  awayStatus?: string;
  /** Cap on the whitelist fan-out. Default 50. */
  maxFanout?: number;
  settings?: Partial<PresenceSettings>;
  environment?: PresenceEnvironment;
}

/** An activity overlay: typing, editing, viewing, or a custom one. */
export interface PresenceActivity {
  status: string;
  context: JsonObject;
  /** Directed at one user (e.g. "typing to you"); undefined: everyone. */
  targetUserId?: number | undefined;
}

/** What one destination should see. */
export interface PresenceState {
  status: string;
  context: JsonObject;
}

type Destination = number | "*";

const NEUTRAL: PresenceState = { status: "online", context: {} };
const ACTIVITY_EVENTS = ["mousemove", "mousedown", "keydown", "touchstart", "scroll", "pointerdown", "wheel"];

/**
 * The guide's presence manager done right: state is declarative (base status +
 * activity overlay + location + custom context), and the manager sends only what
 * changed, at most once per `minIntervalMs` per destination, never one message per
 * keystroke. After a reconnect it re-sends whatever differs from the gateway's
 * automatic `online`.
 */
export class PresenceManager {
  private readonly client: WebSocketClient;
  private readonly minIntervalMs: number;
  private readonly debounceMs: number;
  private readonly typingTimeoutMs: number;
  private readonly heartbeatIntervalMs: number;
  private readonly idleTimeoutMs: number;
  private readonly awayStatus: string;
  private readonly maxFanout: number;
  private settings: PresenceSettings;

  private baseStatus = "online";
  private customContext: JsonObject = {};
  private activity: PresenceActivity | undefined;
  private location: JsonObject | undefined;
  private hidden = false;
  private idle = false;

  /** Canonical key of the state each destination was last sent (`*` = broadcast). */
  private lastSent = new Map<Destination, string>();
  private lastSentAt = -Infinity;
  private lastTypingAt = 0;
  private lastActivityAt = 0;

  private flushTimer: ReturnType<typeof setTimeout> | undefined;
  private typingTimer: ReturnType<typeof setTimeout> | undefined;
  private idleTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private readonly cleanups: Array<() => void> = [];
  private destroyed = false;

  constructor(client: WebSocketClient, options: PresenceManagerOptions = {}) {
    this.client = client;
    this.minIntervalMs = options.minIntervalMs ?? 1000;
    this.debounceMs = options.debounceMs ?? 50;
    this.typingTimeoutMs = options.typingTimeoutMs ?? 3000;
    this.heartbeatIntervalMs = options.heartbeatIntervalMs ?? 0;
    this.idleTimeoutMs = options.idleTimeoutMs ?? 300_000;
    this.awayStatus = options.awayStatus ?? "away";
    this.maxFanout = options.maxFanout ?? 50;
    this.settings = { ...DEFAULT_PRESENCE_SETTINGS, ...options.settings };
    this.resetBaseline();

    this.cleanups.push(
      client.on("open", () => {
        // The gateway announced us `online` with no context on connect: resync from there.
        this.resetBaseline();
        this.changed();
      }),
      client.on("close", () => this.clearTimer("flushTimer")),
    );

    if (this.heartbeatIntervalMs > 0) {
      this.heartbeatTimer = setInterval(() => this.heartbeat(), this.heartbeatIntervalMs);
    }

    const env = options.environment ?? defaultEnvironment();
    const doc = env.document;
    if (doc && options.trackVisibility !== false) {
      const onVisibility = () => this.setHidden(isHidden(doc));
      doc.addEventListener("visibilitychange", onVisibility);
      this.cleanups.push(() => doc.removeEventListener("visibilitychange", onVisibility));
      this.hidden = isHidden(doc);
    }
    const activityTarget = env.activityTarget ?? doc;
    if (activityTarget && options.trackActivity !== false && this.idleTimeoutMs > 0) {
      const onActivity = () => this.noteActivity();
      for (const type of ACTIVITY_EVENTS) activityTarget.addEventListener(type, onActivity, { passive: true });
      this.cleanups.push(() => {
        for (const type of ACTIVITY_EVENTS) activityTarget.removeEventListener(type, onActivity);
      });
      this.lastActivityAt = Date.now();
      this.armIdleTimer(this.idleTimeoutMs);
    }
  }

  // ------------------------------------------------------------ status and context

  /** Base status chosen by the user (`online`, `away`, `busy`, `offline`, or any string). */
  setStatus(status: string): void {
    if (this.baseStatus === status) return;
    this.baseStatus = status;
    this.changed();
  }

  /** Guide name of `setStatus`. */
  updateStatus(status: string): void {
    this.setStatus(status);
  }

  /** Custom context sent with every update (replaces the previous one). */
  setContext(context: JsonObject): void {
    this.customContext = { ...context };
    this.changed();
  }

  /**
   * Guide's `updateStatusWithContext`. Without a target it sets the base status and custom
   * context; with one it sets an activity directed at that user.
   */
  updateStatusWithContext(status: string, context: JsonObject = {}, targetUserId?: number): void {
    if (targetUserId === undefined) {
      this.baseStatus = status;
      this.customContext = { ...context };
      this.changed();
    } else {
      this.setActivity({ status, context, targetUserId });
    }
  }

  /** The guide's `batchUpdate`: applies several updates; only the resulting state is sent (latest wins). */
  batchUpdate(updates: Array<{ status: string; context?: JsonObject }>): void {
    const last = updates[updates.length - 1];
    if (!last) return;
    this.baseStatus = last.status;
    if (last.context !== undefined) this.customContext = { ...last.context };
    this.changed();
  }

  /** Sets (or with undefined clears) the activity overlay. */
  setActivity(activity: PresenceActivity | undefined): void {
    if (activity?.status !== "typing") this.clearTimer("typingTimer");
    this.activity = activity ? { status: activity.status, context: { ...activity.context }, targetUserId: activity.targetUserId } : undefined;
    this.changed();
  }

  clearActivity(): void {
    this.setActivity(undefined);
  }

  // ------------------------------------------------------------ typing

  /**
   * Call on every keystroke: the first call sends `typing` (to `targetUserId`, or everyone);
   * later calls only push back the auto-stop. Typing stops after `typingTimeoutMs` without calls.
   */
  typing(chatId?: string, targetUserId?: number): void {
    this.lastTypingAt = Date.now();
    const a = this.activity;
    const same =
      a !== undefined && a.status === "typing" && a.targetUserId === targetUserId && a.context.chatId === chatId;
    if (!same) {
      const context: JsonObject = {};
      if (chatId !== undefined) context.chatId = chatId;
      this.activity = { status: "typing", context, targetUserId };
      this.changed();
    }
    if (this.typingTimer === undefined) this.armTypingTimer(this.typingTimeoutMs);
  }

  /** Guide name of `typing`. */
  startTyping(chatId?: string, targetUserId?: number): void {
    this.typing(chatId, targetUserId);
  }

  /** Stops typing now (e.g. the message was sent). */
  stopTyping(): void {
    this.clearTimer("typingTimer");
    if (this.activity?.status === "typing") {
      this.activity = undefined;
      this.changed();
    }
  }

  get isTyping(): boolean {
    return this.activity?.status === "typing";
  }

  // ------------------------------------------------------------ documents and location

  /** Editing a document (section and cursor are optional; cursor moves coalesce to one update per interval). */
  startEditing(documentId: string, section?: string, cursorPosition?: number): void {
    const context: JsonObject = { documentId };
    if (section !== undefined) context.section = section;
    if (cursorPosition !== undefined) context.cursorPosition = cursorPosition;
    this.setActivity({ status: "editing", context });
  }

  /** Back to viewing the document (the guide's `stopEditing`). */
  stopEditing(documentId: string): void {
    this.setActivity({ status: "viewing", context: { documentId } });
  }

  /** Where in the app the user is: sent as `context.location = {page, section?}`. */
  updateLocation(page: string, section?: string): void {
    const location: JsonObject = { page };
    if (section !== undefined) location.section = section;
    this.location = location;
    this.changed();
  }

  // ------------------------------------------------------------ privacy

  updateSettings(settings: Partial<PresenceSettings>): void {
    this.settings = { ...this.settings, ...settings };
    this.changed();
  }

  getSettings(): PresenceSettings {
    return { ...this.settings, allowedUsers: this.settings.allowedUsers ? [...this.settings.allowedUsers] : null };
  }

  // ------------------------------------------------------------ introspection and control

  /** What everyone (or the whitelist) should currently see, after privacy filtering. */
  currentState(): PresenceState {
    return this.broadcastState();
  }

  /** Sends pending changes now, bypassing debounce and interval (e.g. before the page unloads). */
  flush(): void {
    this.clearTimer("flushTimer");
    if (this.destroyed || !this.client.isOpen) return;
    const desired = this.desired();
    let sent = false;
    const star = desired.get("*");
    if (star !== undefined) {
      const key = stateKey(star);
      if (this.lastSent.get("*") !== key) {
        if (!this.client.sendPresenceUpdate(star.status, null, star.context)) return;
        sent = true;
        // A broadcast reaches the targeted users too.
        for (const dest of this.lastSent.keys()) this.lastSent.set(dest, key);
        this.lastSent.set("*", key);
      }
    }
    for (const [dest, state] of desired) {
      if (dest === "*") continue;
      const key = stateKey(state);
      if (this.lastSent.get(dest) === key) continue;
      if (!this.client.sendPresenceUpdate(state.status, dest, state.context)) return;
      sent = true;
      this.lastSent.set(dest, key);
    }
    this.prune(desired);
    if (sent) this.lastSentAt = Date.now();
  }

  /** Removes listeners and timers. Sends nothing: the gateway announces `offline` when the connection closes. */
  destroy(): void {
    this.destroyed = true;
    for (const c of this.cleanups.splice(0)) c();
    this.clearTimer("flushTimer");
    this.clearTimer("typingTimer");
    this.clearTimer("idleTimer");
    if (this.heartbeatTimer !== undefined) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = undefined;
  }

  // ------------------------------------------------------------ internals

  private resetBaseline(): void {
    this.lastSent = new Map([["*", stateKey(NEUTRAL)]]);
  }

  private changed(): void {
    if (this.destroyed || this.flushTimer !== undefined || !this.client.isOpen) return;
    if (!this.differs()) return;
    const now = Date.now();
    const due = Math.max(now + this.debounceMs, this.lastSentAt + this.minIntervalMs);
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined;
      this.flush();
    }, due - now);
  }

  private differs(): boolean {
    for (const [dest, state] of this.desired()) {
      if (this.lastSent.get(dest) !== stateKey(state)) return true;
    }
    return false;
  }

  private broadcastState(): PresenceState {
    const s = this.settings;
    let status = this.baseStatus;
    if ((this.hidden || this.idle) && status === "online") status = this.awayStatus;
    if (!s.showOnlineStatus) status = "online";
    const context: JsonObject = { ...this.customContext };
    const a = this.activity;
    if (a && a.targetUserId === undefined && s.showActivity) {
      status = a.status;
      Object.assign(context, a.context);
    }
    if (this.location) context.location = { ...this.location };
    return { status, context: this.filter(context) };
  }

  private filter(context: JsonObject): JsonObject {
    if (!this.settings.showActivity) delete context.activity;
    if (!this.settings.showLocation) delete context.location;
    return context;
  }

  /** Per destination, what it should see now. */
  private desired(): Map<Destination, PresenceState> {
    const s = this.settings;
    const out = new Map<Destination, PresenceState>();
    if (!s.enabled) {
      for (const dest of this.lastSent.keys()) out.set(dest, NEUTRAL);
      return out;
    }
    const bc = this.broadcastState();
    const a = this.activity;
    const targeted =
      a && a.targetUserId !== undefined && s.showActivity
        ? { target: a.targetUserId, state: { status: a.status, context: this.filter({ ...bc.context, ...a.context }) } }
        : undefined;
    if (s.allowedUsers) {
      const allowed = s.allowedUsers.slice(0, this.maxFanout);
      out.set("*", NEUTRAL); // nothing beyond the gateway's own `online` for everyone else
      for (const id of allowed) out.set(id, bc);
      if (targeted && allowed.includes(targeted.target)) out.set(targeted.target, targeted.state);
      for (const dest of this.lastSent.keys()) if (!out.has(dest)) out.set(dest, NEUTRAL);
    } else {
      out.set("*", bc);
      if (targeted) out.set(targeted.target, targeted.state);
      for (const dest of this.lastSent.keys()) if (!out.has(dest)) out.set(dest, bc);
    }
    return out;
  }

  /** Forget users who now see the same as everyone (they follow broadcasts again). */
  private prune(desired: Map<Destination, PresenceState>): void {
    if (this.settings.enabled && this.settings.allowedUsers) {
      const star = this.lastSent.get("*");
      for (const [dest, key] of this.lastSent) {
        if (dest !== "*" && !this.settings.allowedUsers.includes(dest) && key === star) this.lastSent.delete(dest);
      }
      return;
    }
    const star = this.lastSent.get("*");
    const target = this.activity?.targetUserId;
    for (const [dest, key] of this.lastSent) {
      if (dest !== "*" && dest !== target && key === star && desired.has(dest)) this.lastSent.delete(dest);
    }
  }

  private heartbeat(): void {
    if (!this.client.isOpen || !this.settings.enabled) return;
    if (Date.now() - this.lastSentAt < this.heartbeatIntervalMs) return;
    this.lastSent.clear();
    this.flush();
    if (!this.lastSent.has("*")) this.lastSent.set("*", stateKey(NEUTRAL));
  }

  private setHidden(hidden: boolean): void {
    if (this.hidden === hidden) return;
    this.hidden = hidden;
    if (!hidden) this.noteActivity();
    this.changed();
  }

  private noteActivity(): void {
    this.lastActivityAt = Date.now();
    if (this.idle) {
      this.idle = false;
      this.changed();
    }
    if (this.idleTimer === undefined && this.idleTimeoutMs > 0) this.armIdleTimer(this.idleTimeoutMs);
  }

  /** One timer, re-armed lazily: activity events only store a timestamp. */
  private armIdleTimer(delay: number): void {
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      const quiet = Date.now() - this.lastActivityAt;
      if (quiet >= this.idleTimeoutMs) {
        if (!this.idle) {
          this.idle = true;
          this.changed();
        }
      } else {
        this.armIdleTimer(this.idleTimeoutMs - quiet);
      }
    }, delay);
  }

  private armTypingTimer(delay: number): void {
    this.typingTimer = setTimeout(() => {
      this.typingTimer = undefined;
      if (this.activity?.status !== "typing") return;
      const quiet = Date.now() - this.lastTypingAt;
      if (quiet >= this.typingTimeoutMs) this.stopTyping();
      else this.armTypingTimer(this.typingTimeoutMs - quiet);
    }, delay);
  }

  private clearTimer(name: "flushTimer" | "typingTimer" | "idleTimer"): void {
    const t = this[name];
    if (t !== undefined) {
      clearTimeout(t);
      this[name] = undefined;
    }
  }
}

function isHidden(doc: { hidden?: boolean; visibilityState?: string }): boolean {
  return doc.hidden === true || doc.visibilityState === "hidden";
}

function defaultEnvironment(): PresenceEnvironment {
  const g = globalThis as { document?: PresenceEnvironment["document"]; window?: ListenerTarget };
  return { document: g.document, activityTarget: g.window ?? g.document };
}

/** Canonical JSON (sorted keys) so equal states compare equal whatever the key order. */
export function stateKey(state: PresenceState): string {
  return canonical(state);
}

function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (typeof value === "object" && value !== null) {
    const obj = value as Record<string, unknown>;
    const keys = Object.keys(obj)
      .filter((k) => obj[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonical(obj[k])}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

import type { SendOptions, WebSocketClient } from "./client.js";
import { isObject, type DataEventMessage, type JsonObject, type ServerAckPayload } from "./types.js";

/** A `data_event` as the gateway delivers it, flattened for applications. */
export interface ReceivedData {
  /** Sender's user id (`fromUserId`). */
  senderId: number | undefined;
  /** Server-set display name. */
  senderName: string;
  /** Server-set RFC 3339 timestamp. */
  timestamp: string;
  /** Server-set unique id. */
  messageId: string;
  action: string | undefined;
  resource: string | undefined;
  data: JsonObject;
  /** The whole payload, for anything else the sender put there. */
  payload: JsonObject;
  message: DataEventMessage;
}

/** Flattens a `data_event` (missing server fields become empty strings). */
export function readDataEvent(message: DataEventMessage): ReceivedData {
  const payload: JsonObject = isObject(message.payload) ? message.payload : {};
  const str = (v: unknown) => (typeof v === "string" ? v : "");
  return {
    senderId: message.fromUserId,
    senderName: str(payload.senderName),
    timestamp: str(payload.timestamp),
    messageId: str(payload.messageId),
    action: typeof payload.action === "string" ? payload.action : undefined,
    resource: typeof payload.resource === "string" ? payload.resource : undefined,
    data: isObject(payload.data) ? payload.data : {},
    payload,
    message,
  };
}

/**
 * Server-mediated peer-to-peer (guide section 4): every message goes through the gateway,
 * which adds `senderName`, `timestamp` and `messageId` and acks delivery.
 */
export class P2PMessaging {
  constructor(private readonly client: WebSocketClient) {}

  /**
   * Sends any `data_request` payload to one user and resolves on the gateway's
   * `server_ack` (`status: "delivered"`); rejects with `ServerError` 404 when the
   * user is not connected.
   */
  sendToUser(targetUserId: number, payload: JsonObject, options?: SendOptions): Promise<ServerAckPayload> {
    return this.client.sendMessageWithAck({ type: "data_request", targetUserId, payload }, options);
  }

  /** Private chat message (`action: send_message`, `resource: chat`), with ack. */
  sendPrivateMessage(targetUserId: number, text: string, options?: SendOptions): Promise<ServerAckPayload> {
    return this.sendToUser(
      targetUserId,
      { action: "send_message", resource: "chat", data: { text, messageType: "private", clientTimestamp: Date.now() } },
      options,
    );
  }

  /** Collaboration invitation (`send_invitation` / `collaboration`), with ack. */
  sendCollaborationInvite(
    targetUserId: number,
    project: { id: string; name: string; role?: string; message?: string; expiresInMs?: number },
    options?: SendOptions,
  ): Promise<ServerAckPayload> {
    return this.sendToUser(
      targetUserId,
      {
        action: "send_invitation",
        resource: "collaboration",
        data: {
          projectId: project.id,
          projectName: project.name,
          role: project.role ?? "editor",
          message: project.message ?? "",
          invitationExpiry: Date.now() + (project.expiresInMs ?? 24 * 60 * 60 * 1000),
        },
      },
      options,
    );
  }

  /** WebRTC call signalling (`initiate_call` / `webrtc`), with ack. Returns the call id with the ack. */
  async initiateVideoCall(
    targetUserId: number,
    sdpOffer: string,
    options?: SendOptions,
  ): Promise<ServerAckPayload & { callId: string }> {
    const callId = this.client.generatePid();
    const ack = await this.sendToUser(
      targetUserId,
      { action: "initiate_call", resource: "webrtc", data: { callType: "video", sdpOffer, callId } },
      options,
    );
    return { ...ack, callId };
  }

  /** Listens to `data_event`s sent to me by a user (`fromUserId`); all senders when `fromUserId` is omitted. */
  onMessage(handler: (event: ReceivedData) => void, fromUserId?: number): () => void {
    return this.client.on("dataEvent", (message) => {
      if (message.fromUserId === undefined) return;
      if (fromUserId !== undefined && message.fromUserId !== fromUserId) return;
      handler(readDataEvent(message));
    });
  }
}

/** A chat message received. */
export interface ChatMessage {
  senderId: number | undefined;
  senderName: string;
  text: string;
  /** `private` for P2P, `public` for broadcasts (as the sender declared it). */
  messageType: string;
  timestamp: string;
  messageId: string;
}

/** Chat on top of the gateway (guide section 8.1). */
export class ChatSystem {
  constructor(private readonly client: WebSocketClient) {}

  /** Broadcast to everyone connected (except this connection), with ack. */
  sendPublicMessage(text: string, options?: SendOptions): Promise<ServerAckPayload> {
    return this.client.sendMessageWithAck(
      { type: "data_request", payload: { action: "send_message", resource: "chat", data: { text, messageType: "public" } } },
      options,
    );
  }

  /** Private message to one user, with ack. */
  sendPrivateMessage(targetUserId: number, text: string, options?: SendOptions): Promise<ServerAckPayload> {
    return this.client.sendMessageWithAck(
      {
        type: "data_request",
        targetUserId,
        payload: { action: "send_message", resource: "chat", data: { text, messageType: "private" } },
      },
      options,
    );
  }

  /** `get_history` generic request: needs an application handler on the server (the bare gateway answers 501). */
  getChatHistory<T = unknown>(chatId: string, limit = 50): Promise<T> {
    return this.client.sendGenericRequest<T>({ action: "get_history", resource: "chat", data: { chatId, limit } });
  }

  /** Listens to chat messages (`resource: chat`, `action: send_message`). */
  onMessage(handler: (message: ChatMessage) => void): () => void {
    return this.client.on("dataEvent", (message) => {
      const e = readDataEvent(message);
      if (e.resource !== "chat" || e.action !== "send_message") return;
      handler({
        senderId: e.senderId,
        senderName: e.senderName,
        text: typeof e.data.text === "string" ? e.data.text : "",
        messageType: typeof e.data.messageType === "string" ? e.data.messageType : "",
        timestamp: e.timestamp,
        messageId: e.messageId,
      });
    });
  }
}

/** Notifications (guide section 8.2; gateway.md section 5 item 3). */
export class NotificationSystem {
  constructor(private readonly client: WebSocketClient) {}

  /**
   * Delivers to the listed users only (`payload.resource == "notification"` with
   * `data.targetUsers`; the gateway caps the list), with ack.
   */
  sendNotification(targetUsers: number[], notification: JsonObject, options?: SendOptions): Promise<ServerAckPayload> {
    return this.client.sendMessageWithAck(
      {
        type: "data_request",
        payload: { action: "send_notification", resource: "notification", data: { ...notification, targetUsers } },
      },
      options,
    );
  }

  /**
   * `mark_read` as a `generic_request` (the guide broadcast a data_request, which on the bare
   * gateway would tell every connected user the notification id). Needs an application
   * handler on the server; the bare gateway answers 501 (`ServerError`).
   */
  markAsRead<T = unknown>(notificationId: string, options?: SendOptions): Promise<T> {
    return this.client.sendGenericRequest<T>(
      { action: "mark_read", resource: "notification", data: { notificationId } },
      options,
    );
  }

  /** Listens to notifications (`resource: notification`). */
  onNotification(handler: (event: ReceivedData) => void): () => void {
    return this.client.on("dataEvent", (message) => {
      const e = readDataEvent(message);
      if (e.resource === "notification") handler(e);
    });
  }
}

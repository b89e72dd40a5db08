//! The library API: a [`Handler`] plugs application logic into the gateway (the original Go
//! package's `AuthenticateAndGetUserData`, `OnConnect`, `ProcessClientMessage`,
//! `OnDisconnect`), and [`Ctx`] is what a handler can do from inside a callback.
//!
//! Everything runs on the shard thread that owns the connection, so a handler never locks;
//! nothing may block, which is why acks and client requests take a timeout and a callback
//! instead of returning a future.

use std::time::Duration;

use bytes::Bytes;

use crate::auth::{Identity, UserId};
use crate::proto::envelope::{self, ClientEnvelope};
use crate::shard::{ConnKey, Core, Reject};

use super::{Gateway, GatewayState};

/// One connection as a handler sees it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub key: ConnKey,
    pub user: UserId,
}

/// Whether the built-in rules should still run after a handler callback.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Run the built-in gateway rules for this message.
    Continue,
    /// The handler answered; skip the built-in rules.
    Handled,
}

/// How a server message sent with [`Ctx::send_with_ack`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// The client sent `client_ack`; `status` and `error` as it gave them.
    Acked {
        status: Option<String>,
        error: Option<String>,
    },
    /// No `client_ack` before the timeout (or the connection closed).
    TimedOut,
}

/// How a request sent with [`Ctx::request`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum ResponseOutcome {
    /// The client's `generic_response` payload, as JSON.
    Response(serde_json::Value),
    /// No `generic_response` before the timeout (or the connection closed).
    TimedOut,
}

/// A callback run when an ack or a response arrives or times out.
pub type AckCallback<H> = Box<dyn FnOnce(&mut H, &mut Ctx<'_, H>, AckOutcome)>;
pub type ResponseCallback<H> = Box<dyn FnOnce(&mut H, &mut Ctx<'_, H>, ResponseOutcome)>;

/// Application logic plugged into the gateway. Every method has a default, so the
/// built-in gateway is `impl Handler for BuiltIn {}`.
pub trait Handler: Sized + 'static {
    /// After the JWT verified, before the 101 (on the shard that accepted the socket).
    /// Refuse with an HTTP status (e.g. 403 for a banned user).
    fn authenticate(&mut self, _identity: &Identity) -> Result<(), Reject> {
        Ok(())
    }

    /// The connection is open on its user's home shard.
    fn on_connect(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnRef) {}

    /// Every valid client envelope, before the built-in rules. Return [`Flow::Handled`]
    /// to take it over.
    fn on_message(
        &mut self,
        _ctx: &mut Ctx<'_, Self>,
        _conn: ConnRef,
        _msg: &ClientEnvelope<'_>,
    ) -> Flow {
        Flow::Continue
    }

    /// A `generic_request` whose action the gateway does not know. [`Flow::Continue`]
    /// answers `error_notification` 501.
    fn on_request(
        &mut self,
        _ctx: &mut Ctx<'_, Self>,
        _conn: ConnRef,
        _pid: &str,
        _action: &str,
        _msg: &ClientEnvelope<'_>,
    ) -> Flow {
        Flow::Continue
    }

    /// The connection closed (for any reason).
    fn on_disconnect(&mut self, _ctx: &mut Ctx<'_, Self>, _conn: ConnRef) {}
}

/// The built-in gateway: no application logic beyond spec section 5.
#[derive(Debug, Default)]
pub struct BuiltIn;

impl Handler for BuiltIn {}

/// What a handler can do from a callback: answer, route, broadcast, ask the client.
pub struct Ctx<'a, H: Handler> {
    pub(super) core: &'a mut Core<Gateway<H>>,
    pub(super) state: &'a mut GatewayState<H>,
}

impl<H: Handler> Ctx<'_, H> {
    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.core.shard_id()
    }

    /// The user's display name (`name` claim), if the user is connected on this shard.
    pub fn username(&self, user: UserId) -> Option<&str> {
        self.state.users.get(user).map(|u| u.name())
    }

    /// The user's roles, if the user is connected on this shard.
    pub fn roles(&self, user: UserId) -> Option<&[Box<str>]> {
        self.state.users.get(user).map(|u| u.roles())
    }

    /// Sends a complete JSON envelope to one connection.
    pub fn send(&mut self, conn: ConnKey, json: &[u8]) -> bool {
        self.core.send_text(conn, json)
    }

    /// Sends a JSON envelope to every connection of `user`, on whatever shard it lives.
    pub fn send_to_user(&mut self, user: UserId, json: &[u8]) {
        let frame = crate::shard::encode_shared_text(json);
        super::route_to_users(self.core, self.state, &[user.0], frame, None);
    }

    /// Sends a JSON envelope to every connection of each listed user.
    pub fn send_to_users(&mut self, users: &[UserId], json: &[u8]) {
        let ids: Vec<u64> = users.iter().map(|u| u.0).collect();
        let frame = crate::shard::encode_shared_text(json);
        super::route_to_users(self.core, self.state, &ids, frame, None);
    }

    /// Sends a JSON envelope to every open connection except `exclude` (encoded once), on
    /// every node in cluster mode. Returns false when the cluster link is down and only this
    /// node's connections got it.
    pub fn broadcast(&mut self, json: &[u8], exclude: Option<ConnKey>) -> bool {
        let frame = crate::shard::encode_shared_text(json);
        super::broadcast_frame(self.core, self.state, frame, exclude)
    }

    /// `server_ack` "delivered" for `pid`.
    pub fn server_ack(&mut self, conn: ConnKey, pid: &str) {
        super::send_ack(self.core, self.state, conn, pid);
    }

    /// `error_notification` with `code` and `message`.
    pub fn error(&mut self, conn: ConnKey, original_pid: Option<&str>, code: u16, message: &str) {
        super::send_error(self.core, self.state, conn, original_pid, code, message);
    }

    /// `generic_response` with `payload_json` for `pid`.
    pub fn respond(&mut self, conn: ConnKey, pid: &str, payload_json: &[u8]) {
        let mut out = std::mem::take(&mut self.state.scratch);
        out.clear();
        envelope::write_generic_response_raw(&mut out, pid, payload_json);
        self.core.send_text(conn, &out);
        self.state.scratch = out;
    }

    /// Sends `{"pid":<new>,"type":<msg_type>,"payload":<payload_json>}` and runs `callback`
    /// when the client's `client_ack` for that pid arrives, or after `timeout`.
    pub fn send_with_ack(
        &mut self,
        conn: ConnKey,
        msg_type: &str,
        payload_json: &[u8],
        timeout: Duration,
        callback: AckCallback<H>,
    ) {
        let pid = self.state.ids.next_id();
        let mut out = std::mem::take(&mut self.state.scratch);
        out.clear();
        out.extend_from_slice(br#"{"pid":"#);
        envelope::write_json_str(&mut out, pid.as_str());
        out.extend_from_slice(br#","type":"#);
        envelope::write_json_str(&mut out, msg_type);
        out.extend_from_slice(br#","payload":"#);
        out.extend_from_slice(payload_json);
        out.push(b'}');
        self.core.send_text(conn, &out);
        self.state.scratch = out;
        let pending = super::Pending::Ack(callback);
        super::register_pending(self.core, self.state, conn, pid.as_str(), timeout, pending);
    }

    /// Sends a server-initiated `generic_request` and runs `callback` with the client's
    /// `generic_response` (same pid), or after `timeout`.
    pub fn request(
        &mut self,
        conn: ConnKey,
        action: &str,
        data_json: Option<&[u8]>,
        timeout: Duration,
        callback: ResponseCallback<H>,
    ) {
        let pid = self.state.ids.next_id();
        let mut out = std::mem::take(&mut self.state.scratch);
        out.clear();
        envelope::write_generic_request(&mut out, pid.as_str(), action, data_json);
        let sent = self.core.send_text(conn, &out);
        if sent {
            self.core
                .metrics()
                .inc(crate::metrics::Metric::MsgOutGenericRequest);
        }
        self.state.scratch = out;
        let pending = super::Pending::Response(callback);
        super::register_pending(self.core, self.state, conn, pid.as_str(), timeout, pending);
    }

    /// Closes the connection with a close code and reason.
    pub fn close(&mut self, conn: ConnKey, code: crate::proto::close::CloseCode, reason: &str) {
        self.core.close(conn, code, reason);
    }

    /// A frame encoded once (for handlers that fan out the same bytes many times).
    pub fn encode(json: &[u8]) -> Bytes {
        crate::shard::encode_shared_text(json)
    }
}

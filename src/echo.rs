//! `customws echo`: every text and binary message is sent back unchanged. No auth, no
//! origin check. The Autobahn conformance target and the raw-speed benchmark target, so it
//! goes through exactly the same runtime paths as the gateway (decode in place, queue, flush).

use crate::proto::handshake::UpgradeRequest;
use crate::shard::{Accept, App, ConnKey, Core, Reject};

/// The echo application (one per shard).
#[derive(Debug, Default)]
pub struct Echo;

impl App for Echo {
    type Session = ();
    type Msg = ();
    type Opening = ();

    fn on_upgrade(
        &mut self,
        _core: &mut Core<Self>,
        _req: &UpgradeRequest<'_>,
    ) -> Result<Accept<()>, Reject> {
        Ok(Accept {
            session: (),
            opening: (),
            subprotocol: None,
            home_shard: None,
        })
    }

    fn upgrade_on_any_path(&self) -> bool {
        true
    }

    fn on_text(&mut self, core: &mut Core<Self>, key: ConnKey, payload: &mut [u8]) {
        core.send_text(key, payload);
    }

    fn on_binary(&mut self, core: &mut Core<Self>, key: ConnKey, payload: &mut [u8]) {
        core.send_binary(key, payload);
    }
}

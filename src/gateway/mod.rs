//! The built-in gateway (placeholder while it is being written).
use crate::config::Config;
use crate::echo::Echo;

pub struct GatewayFactory;
impl GatewayFactory {
    pub fn new(_c: &Config) -> Result<Self, String> {
        Err("the gateway is not built yet".into())
    }
    pub fn build(&self, _shard: usize) -> Echo {
        Echo
    }
}

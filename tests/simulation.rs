use customws::sim::Sim;
use customws::Config;

#[test]
fn smoke() {
    let mut c = Config::gateway(customws::config::AuthConfig {
        key: customws::config::JwtKey::Hmac(vec![1; 32]),
        leeway: std::time::Duration::from_secs(1),
        issuer: None,
        audience: None,
        allow_query_token: true,
        allowed_origins: vec![],
    });
    c.rate_limit = 1000;
    let mut sim = Sim::gateway(c, 3).unwrap();
    let a = sim.connect_on(0, 1);
    let b = sim.connect_on(0, 2);
    sim.run_until_idle();
    assert!(sim.is_open(a) && sim.is_open(b));
    println!("{:?}", sim.take_received(a));
    println!("{:?}", sim.take_received(b));
    sim.send_text(a, r#"{"pid":"p1","type":"data_request","targetUserId":2,"payload":{"x":1}}"#);
    sim.run_until_idle();
    println!("{:?}", sim.take_received(a));
    println!("{:?}", sim.take_received(b));
    sim.disconnect(b);
    sim.run_until_idle();
    println!("{:?} {}", sim.take_received(a), sim.is_closed(b));
    sim.advance(std::time::Duration::from_secs(60));
    println!("{:?} {}", sim.take_received(a), sim.is_open(a));
}

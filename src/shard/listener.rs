//! One `SO_REUSEPORT` listener per shard: the kernel spreads incoming connections across the
//! shards' accept queues, so no shard hands accepted sockets to another just to balance load.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog. Rust's default of 128 overflows under connection bursts and costs clients
/// a one-second SYN retry (field notes); the kernel clamps it to `somaxconn`.
pub const BACKLOG: i32 = 4096;

/// Binds a non-blocking listener with `SO_REUSEADDR` + `SO_REUSEPORT`.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// Binds the first shard's listener; when `addr` has port 0, the kernel's choice is read back
/// so every other shard binds the same port.
pub fn bind_all(
    addr: SocketAddr,
    shards: usize,
) -> io::Result<(SocketAddr, Vec<mio::net::TcpListener>)> {
    let first = bind_reuseport(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..shards {
        listeners.push(bind_reuseport(bound)?);
    }
    Ok((bound, listeners))
}

//! One `SO_REUSEPORT` listener per shard: the kernel spreads incoming connections across the
//! shards' accept queues, so no shard hands accepted sockets to another just to balance load.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog. Rust's default of 128 overflows under connection bursts and costs clients
/// a one-second SYN retry (field notes); the kernel clamps it to `somaxconn`.
pub const BACKLOG: i32 = 4096;

/// Whether a socket accepted from a listener with `TCP_NODELAY` set already has it (Linux
/// copies the listener's TCP options into each accepted socket: `inet_csk_clone_lock`). Then
/// the shard skips one `setsockopt` per accepted connection; elsewhere it sets the option on
/// each accepted socket. `tests::accepted_socket_inherits_nodelay` checks the claim.
pub const ACCEPTED_INHERIT_NODELAY: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Binds a non-blocking listener with `SO_REUSEADDR` + `SO_REUSEPORT` and `TCP_NODELAY` (which
/// accepted sockets inherit, see [`ACCEPTED_INHERIT_NODELAY`]).
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
    socket.set_tcp_nodelay(true)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The premise of [`ACCEPTED_INHERIT_NODELAY`]: only the listener sets `TCP_NODELAY`, and
    /// `getsockopt` on the accepted socket reports it set.
    #[test]
    fn accepted_socket_inherits_nodelay() {
        let listener = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        assert!(
            !client.nodelay().unwrap(),
            "a fresh client socket has Nagle on"
        );
        let accepted = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        assert_eq!(accepted.nodelay().unwrap(), ACCEPTED_INHERIT_NODELAY);
    }
}

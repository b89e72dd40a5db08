//! A connection's byte stream: a TCP socket, or (for the deterministic simulation in
//! [`crate::sim`]) an in-memory pipe.
//!
//! The enum keeps the runtime one code path for both: the read, write and registration
//! calls branch once on the variant, and in a server every connection is `Tcp`, so the
//! branch is always predicted. The in-memory side has no readiness source; the simulator
//! tells the shard which pipes to read (see `Shard::sim_turn`).

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// The server's end of a connection.
pub(crate) enum Transport {
    Tcp(TcpStream),
    Mem(ServerEnd),
}

impl Transport {
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.set_nodelay(true),
            Transport::Mem(_) => Ok(()),
        }
    }

    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => {
                registry.register(s, token, Interest::READABLE | Interest::WRITABLE)
            }
            Transport::Mem(_) => Ok(()),
        }
    }

    pub fn deregister(&mut self, registry: &Registry) {
        if let Transport::Tcp(s) = self {
            let _ = registry.deregister(s);
        }
    }

    /// Before the stream is dropped for good: deregisters it where closing the socket does
    /// not. With epoll, closing the last descriptor of a socket removes it from every interest
    /// list (`eventpoll_release`), and a connection's socket is never duplicated, so the
    /// `epoll_ctl(EPOLL_CTL_DEL)` would be one wasted syscall per connection
    /// (`tests::closing_a_registered_socket_ends_its_events`).
    pub fn deregister_before_close(&mut self, registry: &Registry) {
        if !cfg!(any(target_os = "linux", target_os = "android")) {
            self.deregister(registry);
        }
    }

    /// Half-close: the peer reads what was sent, then EOF.
    pub fn shutdown_write(&self) {
        match self {
            Transport::Tcp(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Transport::Mem(m) => m.0.lock().server_write_closed = true,
        }
    }

    /// The in-memory pipe, if this is one.
    pub fn mem(&self) -> Option<&MemPipe> {
        match self {
            Transport::Tcp(_) => None,
            Transport::Mem(m) => Some(&m.0),
        }
    }
}

impl Read for Transport {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read(buf),
            Transport::Mem(m) => m.0.lock().server_read(buf),
        }
    }
}

impl Write for Transport {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write(buf),
            Transport::Mem(m) => m.0.lock().server_write(&[IoSlice::new(buf)]),
        }
    }

    #[inline]
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write_vectored(bufs),
            Transport::Mem(m) => m.0.lock().server_write(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Both ends of an in-memory connection. The client side (the simulator) and the server
/// side share it; the server side travels between shards inside an `Adoption`, so it is
/// `Send` (a `Mutex` that is never contended: the simulation runs on one thread).
#[derive(Clone, Default)]
pub struct MemPipe(Arc<Mutex<PipeState>>);

#[derive(Default)]
pub(crate) struct PipeState {
    /// Client → server bytes not yet read by the server.
    to_server: VecDeque<u8>,
    /// The client closed its side (FIN): once `to_server` is read, the server reads EOF.
    client_closed: bool,
    /// Server → client bytes not yet taken by the client.
    to_client: Vec<u8>,
    /// The server half-closed (HTTP answers).
    server_write_closed: bool,
    /// The server dropped its end (the connection is gone).
    server_dropped: bool,
    /// An edge for the simulator: client bytes or a FIN arrived since the server last
    /// looked, so the connection is readable.
    readable: bool,
}

impl PipeState {
    fn server_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.to_server.is_empty() {
            return if self.client_closed {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.to_server.len());
        for (dst, src) in buf.iter_mut().zip(self.to_server.drain(..n)) {
            *dst = src;
        }
        Ok(n)
    }

    fn server_write(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.server_write_closed {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut n = 0;
        for b in bufs {
            self.to_client.extend_from_slice(b);
            n += b.len();
        }
        Ok(n)
    }
}

impl MemPipe {
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, PipeState> {
        // Poisoning only follows a panic elsewhere; the state is plain bytes and flags.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server's end (dropping it tells the client the connection is gone).
    pub(crate) fn server_end(&self) -> ServerEnd {
        ServerEnd(self.clone())
    }

    /// The client sends bytes.
    pub fn client_write(&self, bytes: &[u8]) {
        let mut s = self.lock();
        if !s.client_closed {
            s.to_server.extend(bytes);
            s.readable = true;
        }
    }

    /// The client closes its side (a FIN).
    pub fn client_close(&self) {
        let mut s = self.lock();
        s.client_closed = true;
        s.readable = true;
    }

    /// Takes everything the server wrote since the last call.
    pub fn client_take(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().to_client)
    }

    /// Whether the server closed or dropped the connection.
    pub fn server_closed(&self) -> bool {
        let s = self.lock();
        s.server_dropped || s.server_write_closed
    }

    /// Whether the client has sent anything (or a FIN) the server has not been told about.
    pub fn readable_pending(&self) -> bool {
        self.lock().readable
    }

    /// Consumes the readable edge.
    pub(crate) fn take_readable(&self) -> bool {
        std::mem::take(&mut self.lock().readable)
    }

    /// Whether the client closed its side.
    pub fn client_closed(&self) -> bool {
        self.lock().client_closed
    }
}

/// The server's handle on a [`MemPipe`]; dropping it marks the connection gone.
pub(crate) struct ServerEnd(MemPipe);

impl Drop for ServerEnd {
    fn drop(&mut self) {
        self.0.lock().server_dropped = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pipe behaves like a non-blocking socket: `WouldBlock` when empty, data in
    /// order, EOF after the client's FIN once drained; the readable edge is consumed once.
    #[test]
    fn mem_pipe_reads_like_a_nonblocking_socket() {
        let pipe = MemPipe::new();
        let mut server = Transport::Mem(pipe.server_end());
        let mut buf = [0u8; 4];
        let err = server.read(&mut buf).expect_err("empty");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        pipe.client_write(b"hello");
        assert!(pipe.take_readable());
        assert!(!pipe.take_readable());
        assert_eq!(server.read(&mut buf).expect("data"), 4);
        assert_eq!(&buf, b"hell");
        pipe.client_close();
        assert_eq!(server.read(&mut buf).expect("rest"), 1);
        assert_eq!(server.read(&mut buf).expect("eof"), 0);
        let iov = [IoSlice::new(b"ab"), IoSlice::new(b"c")];
        assert_eq!(server.write_vectored(&iov).expect("write"), 3);
        assert_eq!(pipe.client_take(), b"abc");
        assert!(!pipe.server_closed());
        drop(server);
        assert!(pipe.server_closed());
    }

    /// The premise of `deregister_before_close`: a registered socket dropped without
    /// `deregister` is out of the poll (no event for its token), and its descriptor number
    /// can be registered again at once.
    #[test]
    fn closing_a_registered_socket_ends_its_events() {
        use std::time::Duration;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(16);
        // Accepts the next connection as a registered transport and waits for its writable
        // edge.
        let accept_registered = |poll: &mut mio::Poll, events: &mut mio::Events, token| {
            let (accepted, _) = listener.accept().unwrap();
            accepted.set_nonblocking(true).unwrap();
            let mut server = Transport::Tcp(TcpStream::from_std(accepted));
            server.register(poll.registry(), token).unwrap();
            poll.poll(events, Some(Duration::from_millis(100))).unwrap();
            assert!(events.iter().any(|e| e.token() == token), "writable edge");
            server
        };
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let mut server = accept_registered(&mut poll, &mut events, Token(7));
        server.deregister_before_close(poll.registry());
        drop(server);
        // Data (and then the client's FIN) for the closed socket: no event may name it.
        let _ = client.write_all(b"late");
        drop(client);
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        assert!(events.iter().all(|e| e.token() != Token(7)));
        // The same descriptor number, reused by the next socket, registers again.
        let _client2 = std::net::TcpStream::connect(addr).unwrap();
        let _again = accept_registered(&mut poll, &mut events, Token(8));
    }

    /// The enum adds at most 12 bytes to a connection over a bare socket (4 bytes).
    #[test]
    fn transport_is_small() {
        assert!(std::mem::size_of::<Transport>() <= 16);
    }
}

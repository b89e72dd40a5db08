//! The floor: the least work a WebSocket echo server can do per message on this kernel, to
//! put the echo figures in proportion. One thread, one `mio::Poll`, one connection slab, one
//! read and one write per connection per poll pass (the batching customws does). Per frame
//! it only unmasks the payload into the output buffer behind an unmasked header: no UTF-8
//! check, no limits, no control-frame semantics (a Close drops the connection), no fragment
//! handling, no timers. It is NOT a conforming or safe server; it exists so that
//! `benches/compare.sh` can show how much of a server's CPU per message is the kernel's
//! socket work that any server pays for the same traffic.
//!
//! Usage: mio-floor ADDR

use std::io::{ErrorKind, Read, Write};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

#[path = "../../floor_ws.rs"]
mod floor_ws;

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    upgraded: bool,
    input: Vec<u8>,
    output: Vec<u8>,
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".into())
        .parse()
        .expect("usage: mio-floor ADDR");
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Slab<Conn> = Slab::new();
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in &events {
            if event.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    let _ = stream.set_nodelay(true);
                    let entry = conns.vacant_entry();
                    poll.registry().register(
                        &mut stream,
                        Token(entry.key()),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    entry.insert(Conn {
                        stream,
                        upgraded: false,
                        input: Vec::new(),
                        output: Vec::new(),
                    });
                }
                continue;
            }
            let key = event.token().0;
            let Some(c) = conns.get_mut(key) else {
                continue;
            };
            let mut alive = true;
            if event.is_readable() {
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            alive = false;
                            break;
                        }
                        Ok(n) => {
                            c.input.extend_from_slice(&buf[..n]);
                            if n < buf.len() {
                                break; // a short read drained the socket (epoll(7))
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => {
                            alive = false;
                            break;
                        }
                    }
                }
                if alive {
                    alive = floor_ws::serve(&mut c.upgraded, &mut c.input, &mut c.output);
                }
            }
            while alive && !c.output.is_empty() {
                match c.stream.write(&c.output) {
                    Ok(n) => {
                        c.output.drain(..n);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => alive = false,
                }
            }
            if !alive {
                conns.remove(key);
            }
        }
    }
}

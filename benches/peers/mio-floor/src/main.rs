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

use base64::Engine;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use sha1::{Digest, Sha1};
use slab::Slab;

const LISTENER: Token = Token(usize::MAX);
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

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
                    alive = if c.upgraded {
                        echo_frames(&mut c.input, &mut c.output)
                    } else {
                        upgrade(c)
                    };
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

/// Answers the HTTP upgrade once the request is complete. False on a malformed request.
fn upgrade(c: &mut Conn) -> bool {
    let Some(end) = c.input.windows(4).position(|w| w == b"\r\n\r\n") else {
        return c.input.len() < 8192;
    };
    let head = String::from_utf8_lossy(&c.input[..end]).into_owned();
    let Some(key) = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim())
    }) else {
        return false;
    };
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
    c.output.extend_from_slice(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .as_bytes(),
    );
    c.input.drain(..end + 4);
    c.upgraded = true;
    echo_frames(&mut c.input, &mut c.output)
}

/// Echoes every complete frame of `input` into `output`, unmasked. False on a Close.
fn echo_frames(input: &mut Vec<u8>, output: &mut Vec<u8>) -> bool {
    let mut at = 0;
    let mut alive = true;
    loop {
        let b = &input[at..];
        if b.len() < 2 {
            break;
        }
        let masked = b[1] & 0x80 != 0;
        let (len, mut header) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            ),
            126 | 127 => break,
            n => (n as usize, 2),
        };
        let mask_at = header;
        if masked {
            header += 4;
        }
        if b.len() < header + len {
            break;
        }
        if b[0] & 0x0f == 8 {
            alive = false;
            break;
        }
        output.push(b[0]);
        if len < 126 {
            output.push(len as u8);
        } else if len <= 0xffff {
            output.push(126);
            output.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            output.push(127);
            output.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let start = output.len();
        output.extend_from_slice(&b[header..header + len]);
        if masked {
            let mask = [b[mask_at], b[mask_at + 1], b[mask_at + 2], b[mask_at + 3]];
            for (i, x) in output[start..].iter_mut().enumerate() {
                *x ^= mask[i & 3];
            }
        }
        at += header + len;
    }
    input.drain(..at);
    alive
}

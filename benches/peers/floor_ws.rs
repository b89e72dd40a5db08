//! The WebSocket half shared by the two floor peers, `mio-floor` and `uring-floor`
//! (each includes this file with `#[path]`), so that the two floors differ only in the
//! kernel interface. Per frame it only unmasks the payload into the output buffer behind an
//! unmasked header: no UTF-8 check, no limits, no control-frame semantics (a Close ends the
//! connection), no fragment handling. Not a conforming or safe server.

use base64::Engine;
use sha1::{Digest, Sha1};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Takes a connection's new input: answers the HTTP upgrade once the request is complete
/// (setting `upgraded`), echoes frames after it. False when the connection must close (a
/// malformed or oversized request, a Close frame).
pub fn serve(upgraded: &mut bool, input: &mut Vec<u8>, output: &mut Vec<u8>) -> bool {
    if *upgraded {
        echo_frames(input, output)
    } else {
        upgrade(upgraded, input, output)
    }
}

/// Answers the HTTP upgrade once the request is complete. False on a malformed request.
fn upgrade(upgraded: &mut bool, input: &mut Vec<u8>, output: &mut Vec<u8>) -> bool {
    let Some(end) = input.windows(4).position(|w| w == b"\r\n\r\n") else {
        return input.len() < 8192;
    };
    let head = String::from_utf8_lossy(&input[..end]).into_owned();
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
    output.extend_from_slice(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .as_bytes(),
    );
    input.drain(..end + 4);
    *upgraded = true;
    echo_frames(input, output)
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

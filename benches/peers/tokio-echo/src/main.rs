//! A tokio-tungstenite echo server: the reference point for `customws echo`.
//!
//! Written the way a competent tokio user would for a server that gets **one core**
//! (`taskset -c 0`): a `current_thread` runtime. A multi-thread runtime on one core adds
//! work-stealing bookkeeping, atomics on every wake-up and cross-thread hand-offs with no
//! parallelism to gain, so it is strictly slower there.
//!
//! Each connection echoes every text/binary message. Replies are `feed`-ed (buffered) while
//! more input is already decoded, and flushed once when the connection has nothing more
//! ready, so a burst of 16 pipelined frames becomes one `write` instead of 16: the same
//! batching customws does, so the comparison measures the runtime, not a naive send loop.
//!
//! Usage: `tokio-echo [ADDR]` (default `127.0.0.1:9001`).

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9001".to_string());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("tokio-echo listening on {}", listener.local_addr()?);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have.
                    eprintln!("accept: {e}");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            tokio::task::spawn_local(serve(stream));
        }
    })
}

async fn serve(stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if !echo_one(&mut ws, msg).await {
            return;
        }
        // Drain whatever is already decoded or readable without waiting, then flush once.
        loop {
            match ws.next().now_or_never() {
                Some(Some(Ok(msg))) => {
                    if !echo_one(&mut ws, msg).await {
                        return;
                    }
                }
                Some(_) => return,
                None => break,
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}

/// Buffers the echo of a data message; pings and closes are answered by tungstenite itself.
async fn echo_one<S>(ws: &mut S, msg: Message) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    match msg {
        Message::Text(_) | Message::Binary(_) => ws.feed(msg).await.is_ok(),
        Message::Close(_) => false,
        _ => true,
    }
}

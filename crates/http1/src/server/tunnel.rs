//! A connection handed over after `101 Switching Protocols` (a WebSocket, most often): the
//! client's connection and the instance's are spliced, bytes copied both ways as they come,
//! until either side closes, nothing moves for the idle limit, the total limit passes, or the
//! server drains. What follows the handshake is not HTTP, so nothing of it is parsed: the
//! instance speaks the protocol, the gateway only carries it.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// What a handler hands the server with a `101` answer: the instance's side of the tunnel.
pub struct Tunnel {
    pub upstream: crate::stream::Stream,
    /// What the instance sent after its `101` head: the new protocol's first bytes.
    pub leftover: Bytes,
    /// The tunnel closes when nothing has crossed it, either way, for this long…
    pub idle: Duration,
    /// …and in any case once it has been open this long.
    pub total: Duration,
}

/// How a tunnel ended, and what crossed it.
#[derive(Debug, Default)]
pub struct Spliced {
    pub to_upstream: u64,
    pub to_client: u64,
}

/// Copies between `client` and the tunnel's instance until one side closes or a limit is
/// reached; `early` are bytes the client sent after its request head, already read.
pub(super) async fn splice<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    early: &[u8],
    tunnel: Tunnel,
    draining: &mut watch::Receiver<bool>,
) -> Spliced {
    let Tunnel {
        mut upstream,
        leftover,
        idle,
        total,
    } = tunnel;
    let mut moved = Spliced::default();
    if client.write_all(&leftover).await.is_err() || upstream.write_all(early).await.is_err() {
        return moved;
    }
    moved.to_client += leftover.len() as u64;
    moved.to_upstream += early.len() as u64;
    let end = Instant::now() + total;
    let (mut from_client, mut from_upstream) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let timer = tokio::time::sleep(idle.min(total));
    tokio::pin!(timer);
    loop {
        tokio::select! {
            read = client.read(&mut from_client) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if upstream.write_all(&from_client[..n]).await.is_err() {
                        break;
                    }
                    moved.to_upstream += n as u64;
                }
            },
            read = upstream.read(&mut from_upstream) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if client.write_all(&from_upstream[..n]).await.is_err() {
                        break;
                    }
                    moved.to_client += n as u64;
                }
            },
            () = &mut timer => break,
            _ = draining.changed() => break,
        }
        // Activity: the idle limit runs again from now, never past the total.
        let next = (Instant::now() + idle).min(end);
        if next > timer.deadline() {
            timer.as_mut().reset(next);
        }
    }
    let _ = upstream.shutdown().await;
    let _ = client.shutdown().await;
    moved
}

//! A connection handed over after `101 Switching Protocols` (a WebSocket, most often): the
//! client's connection and the instance's are spliced, bytes copied both ways as they come,
//! until either side closes, nothing moves for the idle limit, the total limit passes, or the
//! server drains. What follows the handshake is not HTTP, so nothing of it is parsed: the
//! instance speaks the protocol, the gateway only carries it.

use std::sync::atomic::{AtomicU64, Ordering};
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
///
/// Each direction is its own loop, and the limits are watched beside both: a side that
/// stops reading blocks only its direction's write, which the idle limit, the total limit or
/// the drain then cuts short (a blocked write must not hold the tunnel open for ever).
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
    let opened = Instant::now();
    let (to_client, to_upstream) = (AtomicU64::new(0), AtomicU64::new(0));
    // Milliseconds after `opened` of the last byte moved, either way.
    let last = AtomicU64::new(0);
    {
        let (mut client_read, mut client_write) = tokio::io::split(&mut *client);
        let (mut upstream_read, mut upstream_write) = tokio::io::split(&mut upstream);
        let up = async {
            if upstream_write.write_all(early).await.is_err() {
                return;
            }
            to_upstream.fetch_add(early.len() as u64, Ordering::Relaxed);
            copy(
                &mut client_read,
                &mut upstream_write,
                &to_upstream,
                &last,
                opened,
            )
            .await;
        };
        let down = async {
            if client_write.write_all(&leftover).await.is_err() {
                return;
            }
            to_client.fetch_add(leftover.len() as u64, Ordering::Relaxed);
            copy(
                &mut upstream_read,
                &mut client_write,
                &to_client,
                &last,
                opened,
            )
            .await;
        };
        let limits = async {
            let end = opened + total;
            loop {
                let quiet_until =
                    opened + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                let next = quiet_until.min(end);
                if Instant::now() >= next {
                    return;
                }
                tokio::time::sleep_until(next).await;
            }
        };
        // Both directions run to their end: one side's close is passed on as a half-close
        // (`copy`), so what the other still sends (a WebSocket's closing frame) gets through.
        tokio::select! {
            _ = async { tokio::join!(up, down) } => {}
            () = limits => {}
            _ = draining.changed() => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), upstream.shutdown()).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
    Spliced {
        to_upstream: to_upstream.into_inner(),
        to_client: to_client.into_inner(),
    }
}

/// Copies `from` into `to` until `from` ends (then `to` is shut down for writing: the close
/// passes on) or either fails, counting what moved and when. Every write is flushed: a TLS
/// side buffers what it is given.
async fn copy<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut R,
    to: &mut W,
    moved: &AtomicU64,
    last: &AtomicU64,
    opened: Instant,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return;
            }
            Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
            return;
        }
        moved.fetch_add(n as u64, Ordering::Relaxed);
        last.store(opened.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::stream::Stream;

    /// A tunnel to a local instance, and the instance's side of it.
    async fn tunnel(idle: Duration, total: Duration) -> (Tunnel, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (instance, _) = listener.accept().await.unwrap();
        let tunnel = Tunnel {
            upstream: Stream::Plain(upstream),
            leftover: Bytes::new(),
            idle,
            total,
        };
        (tunnel, instance)
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_does_not_hold_the_tunnel() {
        let (tunnel, mut instance) =
            tunnel(Duration::from_millis(300), Duration::from_secs(60)).await;
        // The instance pushes without end; the client reads nothing.
        tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            while instance.write_all(&chunk).await.is_ok() {}
        });
        let (mut client, _never_read) = tokio::io::duplex(1024);
        let (_drain, mut draining) = watch::channel(false);
        let spliced = tokio::time::timeout(
            Duration::from_secs(5),
            splice(&mut client, b"", tunnel, &mut draining),
        )
        .await
        .expect("the idle limit ends a tunnel whose writes are blocked");
        assert!(spliced.to_client <= 64 * 1024, "{spliced:?}");
    }

    #[tokio::test]
    async fn a_busy_tunnel_ends_at_its_total_limit_and_on_drain() {
        for drain in [false, true] {
            let total = if drain {
                Duration::from_secs(60)
            } else {
                Duration::from_millis(500)
            };
            let (tunnel, instance) = tunnel(Duration::from_secs(60), total).await;
            // The instance echoes; the client talks every 20 ms: never idle.
            tokio::spawn(async move {
                let (mut r, mut w) = instance.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
            let (mut client, peer) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(peer);
                tokio::spawn(async move {
                    while r.read(&mut [0u8; 1024]).await.is_ok_and(|n| n > 0) {}
                });
                while w.write_all(b"ping").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let (stop, mut draining) = watch::channel(false);
            if drain {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = stop.send(true);
                    tokio::time::sleep(Duration::from_secs(60)).await;
                });
            }
            let started = Instant::now();
            let spliced = tokio::time::timeout(
                Duration::from_secs(5),
                splice(&mut client, b"", tunnel, &mut draining),
            )
            .await
            .expect("the tunnel ends");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
            assert!(
                spliced.to_upstream > 0 && spliced.to_client > 0,
                "{spliced:?}"
            );
        }
    }
}

//! Tessera's own HTTP/1.1: one codec, the pooled client, and the server core the gateway is
//! built on.
//!
//! General-purpose stacks build a header map, a URI and a body stream per message and drive
//! each connection from a task of its own. For the platform's hot exchanges (every request
//! through the gateway, its upstream calls, service-to-service calls, a service's publishes
//! and fetches on the control plane's log) that machinery is most of what an exchange costs,
//! so they are done here instead, on one codec:
//! - [`fields`]: header fields kept as offsets into the head they were parsed from;
//! - [`head`]: what a head's fields say about its body and connection, read once for requests
//!   and responses;
//! - [`chunked`]: the one chunked decoder, for request and response bodies;
//! - [`pool`]: the client: keep-alive connections driven on the caller's task, whole bodies;
//! - [`server`]: the server core: one task and one buffer per connection, bounded waits.
//!
//! Plain HTTP, or, for the client, TLS with the system's identities when mutual TLS is on
//! (`stream.rs`, `tessera_tls::internal`). This crate knows nothing of routes, passports or
//! services: what a request means is its caller's business.

pub mod chunked;
pub mod fields;
pub mod head;
pub mod pool;
pub mod server;
pub mod stream;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The header that carries the caller's remaining time budget, in milliseconds: each hop
/// gives the calls it makes only what is left.
pub const DEADLINE_HEADER: &str = "x-tessera-deadline-ms";

/// Bodies up to this size go out in the same write as the head.
const INLINE_BODY: usize = 16 * 1024;

/// The most room made ahead for a body of a declared length, at either end: a declared length
/// is only a claim, and an allocation that fails aborts the process.
const RESERVE_AHEAD: usize = 1 << 20;

/// Writes a message whose head is in `head`: a small body goes out in the same system call,
/// a large one is not copied.
pub async fn write_message<S: AsyncWrite + Unpin>(
    stream: &mut S,
    head: &mut Vec<u8>,
    body: &[u8],
) -> std::io::Result<()> {
    if body.len() <= INLINE_BODY {
        head.extend_from_slice(body);
        stream.write_all(head).await
    } else {
        stream.write_all(head).await?;
        stream.write_all(body).await
    }
}

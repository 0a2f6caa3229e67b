//! The exporter: every [`Settings::every`] it takes the ended spans from the process's sink
//! (already OTLP bytes, written as each span ended), writes the request's envelope for them,
//! and posts the two, one after the other, to each target: a full batch is sent from the
//! buffer the spans were written into, not copied into a body of its own (a small one, sent by
//! the timer, is). On a thread of its own, off the process's event loop.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tessera_trace::logs::{self, LogData};
use tessera_trace::span::{self, Encoded};
use tokio::sync::Notify;

use crate::{Resource, Settings, Target, otlp};

/// What a target that cannot take its batches holds for it at most.
pub const HELD_BYTES: usize = 8 * 1024 * 1024;

/// Bytes of spans per request at most (a batch larger is sent in parts; the control plane
/// takes 16 MiB).
const PER_REQUEST: usize = 4 * 1024 * 1024;

/// Log records per request at most.
const LOGS_PER_REQUEST: usize = 4096;

/// A running exporter: [`Handle::flush`] sends what is waiting now (at shutdown).
#[derive(Clone)]
pub struct Handle {
    flush: Arc<Notify>,
    flushed: Arc<Notify>,
    /// Whether an exporter runs (there was a target).
    running: bool,
}

impl Handle {
    /// Sends every span ended so far, waiting at most `within`.
    pub async fn flush(&self, within: Duration) {
        if !self.running {
            return;
        }
        let done = self.flushed.notified();
        self.flush.notify_one();
        let _ = tokio::time::timeout(within, done).await;
    }
}

/// Starts recording spans and exporting them from `resource` per `settings`; with no target,
/// nothing is recorded. A process has one sink, so one exporter: a later call (tests that run
/// several services in one process) gets the running one's handle.
pub fn start(resource: Resource, settings: Settings) -> Handle {
    static RUNNING: std::sync::OnceLock<Handle> = std::sync::OnceLock::new();
    if let Some(running) = RUNNING.get() {
        return running.clone();
    }
    let handle = start_once(resource, settings);
    if handle.running {
        let _ = RUNNING.set(handle.clone());
    }
    handle
}

fn start_once(resource: Resource, settings: Settings) -> Handle {
    let mut handle = Handle {
        flush: Arc::new(Notify::new()),
        flushed: Arc::new(Notify::new()),
        running: false,
    };
    if settings.targets.is_empty() {
        return handle;
    }
    handle.running = true;
    span::start_recording(settings.sample);
    logs::start_exporting();
    // A thread of its own, with a small runtime: wrapping and posting a batch never holds the
    // event loop of the process's requests (a gateway serves on one thread), and the kernel
    // interleaves the two.
    let exporter = handle.clone();
    std::thread::Builder::new()
        .name("tessera-export".into())
        .spawn(move || {
            // The platform's times (spans, tokens, passports, log lines) read the system's
            // clock until this is done, and the counter after (`tessera_trace::time`).
            span::calibrate_clock();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the exporter");
            runtime.block_on(run(resource, settings, exporter));
        })
        .expect("a thread for the exporter");
    handle
}

/// What a body is: spans or log records (where it is posted).
#[derive(Clone, Copy)]
enum Signal {
    Traces,
    Logs,
}

struct Held {
    target: Target,
    traces_url: String,
    logs_url: String,
    waiting: VecDeque<(Signal, Payload)>,
    bytes: usize,
    /// Whether the last post failed (logged once per outage).
    failing: bool,
}

impl Held {
    /// A target holding nothing yet.
    fn new(target: Target) -> Self {
        Held {
            traces_url: target.traces_url(),
            logs_url: target.logs_url(),
            target,
            waiting: VecDeque::new(),
            bytes: 0,
            failing: false,
        }
    }
}

async fn run(resource: Resource, settings: Settings, handle: Handle) {
    let mut targets: Vec<Held> = settings.targets.into_iter().map(Held::new).collect();
    let mut spans = Encoded::default();
    let mut lines: Vec<LogData> = Vec::new();
    let encoder = otlp::Encoder::new(&resource);
    let buffers = Arc::new(Buffers::default());
    let mut reported_drops = 0;
    let mut reported_log_drops = 0;
    loop {
        let flushing = tokio::select! {
            _ = tokio::time::sleep(settings.every) => false,
            _ = span::sink().full() => false,
            _ = handle.flush.notified() => true,
        };
        span::sink().take(&mut spans);
        let dropped = span::sink().dropped();
        if dropped > reported_drops {
            metrics::counter!("tessera_spans_dropped_total").increment(dropped - reported_drops);
            tracing::warn!(
                dropped = dropped - reported_drops,
                "spans dropped: the exporter fell behind"
            );
            reported_drops = dropped;
        }
        if spans.spans > 0 {
            metrics::counter!("tessera_spans_exported_total").increment(spans.spans as u64);
            if sent_in_place(&spans.bytes) {
                // The usual batch: its buffer goes out as it is, after the envelope, and comes
                // back to `buffers` once sent; the sink gets a spare one in its place.
                let mut head = Vec::new();
                encoder.head(spans.bytes.len(), &mut head);
                let mut spare = buffers.take();
                spare.reserve(span::FLUSH_AT + 64 * 1024);
                let batch = std::mem::replace(&mut spans.bytes, spare);
                let payload = Payload {
                    head: Bytes::from(head),
                    rest: buffers.body(batch),
                };
                hold(&mut targets, Signal::Traces, payload);
            } else {
                for part in otlp::parts(&spans.bytes, PER_REQUEST) {
                    // A body of its own size: what a held body pins is what it counts.
                    let mut body = Vec::new();
                    encoder.encode(part, &mut body);
                    hold(
                        &mut targets,
                        Signal::Traces,
                        Payload::whole(Bytes::from(body)),
                    );
                }
            }
        }
        logs::sink().take(&mut lines);
        let dropped = logs::sink().dropped();
        if dropped > reported_log_drops {
            metrics::counter!("tessera_logs_dropped_total").increment(dropped - reported_log_drops);
            reported_log_drops = dropped;
        }
        if !lines.is_empty() {
            for part in lines.chunks(LOGS_PER_REQUEST) {
                hold(
                    &mut targets,
                    Signal::Logs,
                    Payload::whole(Bytes::from(otlp::encode_logs(&resource, part))),
                );
            }
            lines.clear();
        }
        for held in &mut targets {
            send(held).await;
        }
        if flushing {
            handle.flushed.notify_waiters();
        }
    }
}

/// Request bodies' buffers, used again once sent: a fresh buffer of a few hundred KiB per
/// batch cost the process a page fault for every 4 KiB of it, each time (the allocator hands
/// blocks that large back to the kernel), which was a tenth of what tracing cost a gateway.
#[derive(Default)]
struct Buffers(Mutex<Vec<Vec<u8>>>);

/// Buffers kept at most (a body is usually sent, and its buffer back, before the next batch).
const SPARE_BUFFERS: usize = 4;

impl Buffers {
    fn take(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default()
    }

    /// `bytes` as a body whose buffer comes back here when the last copy of it is dropped.
    fn body(self: &Arc<Self>, bytes: Vec<u8>) -> Bytes {
        Bytes::from_owner(Body {
            bytes,
            home: Arc::clone(self),
        })
    }
}

struct Body {
    bytes: Vec<u8>,
    home: Arc<Buffers>,
}

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.bytes);
        bytes.clear();
        let mut spare = self.home.0.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < SPARE_BUFFERS {
            spare.push(bytes);
        }
    }
}

/// Whether a batch goes out in the buffer it was written into: one request's worth, filling at
/// least half of its buffer. A small batch (a quiet process's, sent by the timer) is copied
/// into a body of its size instead: a target that cannot take its batches holds them, and
/// [`HELD_BYTES`] counts what they hold, which must not be a sixteenth of the memory pinned.
fn sent_in_place(batch: &Vec<u8>) -> bool {
    batch.len() <= PER_REQUEST && batch.len() * 2 >= batch.capacity()
}

/// A request's body: a head, and the bytes after it (a batch of spans, in the buffer the
/// sink wrote them into), sent one after the other with their length (`Content-Length`).
#[derive(Clone, Debug, Default)]
struct Payload {
    head: Bytes,
    rest: Bytes,
}

impl Payload {
    /// A body in one piece.
    fn whole(body: Bytes) -> Self {
        Payload {
            head: Bytes::new(),
            rest: body,
        }
    }

    fn len(&self) -> usize {
        self.head.len() + self.rest.len()
    }
}

impl http_body::Body for Payload {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = match self.head.is_empty() {
            false => std::mem::take(&mut self.head),
            true => std::mem::take(&mut self.rest),
        };
        std::task::Poll::Ready((!next.is_empty()).then(|| Ok(http_body::Frame::data(next))))
    }

    fn is_end_stream(&self) -> bool {
        self.len() == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len() as u64)
    }
}

/// Queues `body` for every target, each holding at most [`HELD_BYTES`] (the oldest go).
fn hold(targets: &mut [Held], signal: Signal, body: Payload) {
    for held in targets {
        held.bytes += body.len();
        held.waiting.push_back((signal, body.clone()));
        while held.bytes > HELD_BYTES {
            let (_, old) = held.waiting.pop_front().expect("bytes are held");
            held.bytes -= old.len();
        }
    }
}

/// Posts what `held` waits with, oldest first, until one fails.
async fn send(held: &mut Held) {
    while let Some((signal, body)) = held.waiting.front() {
        let url = match signal {
            Signal::Traces => &held.traces_url,
            Signal::Logs => &held.logs_url,
        };
        let sent = held
            .target
            .http
            .post(url)
            .header("content-type", "application/x-protobuf")
            .timeout(Duration::from_secs(2))
            .body(reqwest::Body::wrap(body.clone()))
            .send()
            .await;
        let ok = match sent {
            Ok(r) if r.status().is_success() => true,
            // Refused as it is (a 4xx other than too many): sending it again would not help.
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                tracing::warn!(url = %url, status = r.status().as_u16(), "telemetry refused by the collector; dropped");
                let (_, old) = held.waiting.pop_front().expect("a front");
                held.bytes -= old.len();
                continue;
            }
            Ok(r) => {
                if !held.failing {
                    tracing::warn!(url = %url, status = r.status().as_u16(), "cannot export telemetry; kept for the next batch");
                }
                false
            }
            Err(e) => {
                if !held.failing {
                    tracing::warn!(url = %url, error = %e, "cannot export telemetry; kept for the next batch");
                }
                false
            }
        };
        held.failing = !ok;
        if !ok {
            return;
        }
        let (_, old) = held.waiting.pop_front().expect("a front");
        held.bytes -= old.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_goes_after_its_head_with_its_length() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let received = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // The head, then as many bytes as it says.
            let (head, length) = loop {
                let n = conn.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8(got[..end].to_vec()).unwrap();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .expect("a Content-Length, not chunks")
                        .parse()
                        .unwrap();
                    got.drain(..end + 4);
                    break (head, length);
                }
            };
            while got.len() < length {
                let n = conn.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            (head, got)
        });
        let target = Target {
            base,
            http: reqwest::Client::new(),
        };
        let mut held = Held::new(target);
        let batch: Vec<u8> = (0..100_000u32).map(|n| n as u8).collect();
        let payload = Payload {
            head: Bytes::from_static(b"envelope:"),
            rest: Bytes::from(batch.clone()),
        };
        hold(std::slice::from_mut(&mut held), Signal::Traces, payload);
        send(&mut held).await;
        let (head, body) = received.await.unwrap();
        assert!(head.starts_with("POST /v1/traces "), "{head}");
        assert_eq!(&body[..9], b"envelope:");
        assert_eq!(&body[9..], &batch[..]);
        assert!(held.waiting.is_empty() && held.bytes == 0 && !held.failing);
    }

    #[test]
    fn only_a_batch_filling_its_buffer_goes_out_in_it() {
        let mut batch = Vec::with_capacity(span::FLUSH_AT + 64 * 1024);
        batch.resize(10_000, 1);
        assert!(!sent_in_place(&batch), "a timer's small batch is copied");
        batch.resize(span::FLUSH_AT, 1);
        assert!(sent_in_place(&batch));
        batch.resize(PER_REQUEST + 1, 1);
        assert!(
            !sent_in_place(&batch),
            "more than a request's worth is cut in parts"
        );
    }

    #[test]
    fn a_body_s_buffer_comes_back_once_every_copy_is_dropped() {
        let buffers = Arc::new(Buffers::default());
        let mut bytes = buffers.take();
        bytes.extend_from_slice(&[7; 300_000]);
        let at = bytes.as_ptr();
        let body = buffers.body(bytes);
        let copy = body.clone();
        assert_eq!(&copy[..3], &[7, 7, 7]);
        drop(body);
        assert!(
            buffers.0.lock().unwrap().is_empty(),
            "a copy still holds it"
        );
        drop(copy);
        let again = buffers.take();
        assert!(again.is_empty() && again.capacity() >= 300_000);
        assert_eq!(again.as_ptr(), at, "the same buffer");
        // At most a few are kept.
        for _ in 0..10 {
            drop(buffers.body(vec![1; 10]));
        }
        assert_eq!(buffers.0.lock().unwrap().len(), SPARE_BUFFERS);
    }
}

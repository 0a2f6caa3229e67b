//! The export task: every [`Settings::every`] it takes the ended spans from the process's
//! sink, encodes them once, and posts the body to each target.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tessera_trace::span::{self, SpanData};
use tokio::sync::Notify;

use crate::{Resource, Settings, Target, otlp};

/// What a target that cannot take its batches holds for it at most.
pub const HELD_BYTES: usize = 8 * 1024 * 1024;

/// Spans per request at most (a batch larger is sent in parts).
const PER_REQUEST: usize = 4096;

/// A running exporter: [`Handle::flush`] sends what is waiting now (at shutdown).
#[derive(Clone)]
pub struct Handle {
    flush: Arc<Notify>,
    flushed: Arc<Notify>,
}

impl Handle {
    /// Sends every span ended so far, waiting at most `within`.
    pub async fn flush(&self, within: Duration) {
        let done = self.flushed.notified();
        self.flush.notify_one();
        let _ = tokio::time::timeout(within, done).await;
    }
}

/// Starts recording spans and exporting them from `resource` per `settings`; with no target,
/// nothing is recorded.
pub fn start(resource: Resource, settings: Settings) -> Handle {
    let handle = Handle {
        flush: Arc::new(Notify::new()),
        flushed: Arc::new(Notify::new()),
    };
    if settings.targets.is_empty() {
        return handle;
    }
    span::start_recording(settings.sample);
    tokio::spawn(run(resource, settings, handle.clone()));
    handle
}

struct Held {
    target: Target,
    waiting: VecDeque<Bytes>,
    bytes: usize,
    /// Whether the last post failed (logged once per outage).
    failing: bool,
}

async fn run(resource: Resource, settings: Settings, handle: Handle) {
    let mut targets: Vec<Held> = settings
        .targets
        .into_iter()
        .map(|target| Held {
            target,
            waiting: VecDeque::new(),
            bytes: 0,
            failing: false,
        })
        .collect();
    let mut spans: Vec<SpanData> = Vec::new();
    let mut reported_drops = 0;
    loop {
        let flushing = tokio::select! {
            _ = tokio::time::sleep(settings.every) => false,
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
        if !spans.is_empty() {
            metrics::counter!("tessera_spans_exported_total").increment(spans.len() as u64);
            for part in spans.chunks(PER_REQUEST) {
                let body = Bytes::from(otlp::encode_spans(&resource, part));
                for held in &mut targets {
                    held.bytes += body.len();
                    held.waiting.push_back(body.clone());
                    while held.bytes > HELD_BYTES {
                        let old = held.waiting.pop_front().expect("bytes are held");
                        held.bytes -= old.len();
                    }
                }
            }
            spans.clear();
        }
        for held in &mut targets {
            send(held).await;
        }
        if flushing {
            handle.flushed.notify_waiters();
        }
    }
}

/// Posts what `held` waits with, oldest first, until one fails.
async fn send(held: &mut Held) {
    while let Some(body) = held.waiting.front() {
        let sent = held
            .target
            .http
            .post(&held.target.url)
            .header("content-type", "application/x-protobuf")
            .timeout(Duration::from_secs(2))
            .body(body.clone())
            .send()
            .await;
        let ok = match sent {
            Ok(r) if r.status().is_success() => true,
            // Refused as it is (a 4xx other than too many): sending it again would not help.
            Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
                tracing::warn!(url = %held.target.url, status = r.status().as_u16(), "spans refused by the collector; dropped");
                let old = held.waiting.pop_front().expect("a front");
                held.bytes -= old.len();
                continue;
            }
            Ok(r) => {
                if !held.failing {
                    tracing::warn!(url = %held.target.url, status = r.status().as_u16(), "cannot export spans; kept for the next batch");
                }
                false
            }
            Err(e) => {
                if !held.failing {
                    tracing::warn!(url = %held.target.url, error = %e, "cannot export spans; kept for the next batch");
                }
                false
            }
        };
        held.failing = !ok;
        if !ok {
            return;
        }
        let old = held.waiting.pop_front().expect("a front");
        held.bytes -= old.len();
    }
}

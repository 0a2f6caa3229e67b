//! Publish → consume through the `tessera` bus API against a running event log.
//!
//! `bench-eventlog <log-url> <topic> <events> <batch> <publishers>`, the log's URL the control
//! plane's (its embedded log) or a `nats://` one (NATS JetStream, through the same `Bus`): `publishers` tasks
//! publish `events` to `topic` in all, `batch` per call (1 = one by one); one consumer (group
//! `bench`) fetches and commits. It calls as the service whose credential is in
//! `TESSERA_CREDENTIAL`, which must produce and consume `topic`.
//! Prints one JSON line: events/s from the first publish to the last event consumed, and the
//! publish→consume latency percentiles.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tessera::events::{Bus, ControlBus, Event, NatsBus};
use tessera::identity::Credential;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, control, topic, events, batch, publishers] = args.as_slice() else {
        anyhow::bail!("usage: bench-eventlog <log-url> <topic> <events> <batch> <publishers>");
    };
    let (events, batch, publishers): (usize, usize, usize) =
        (events.parse()?, batch.parse()?, publishers.parse()?);
    let bus: Arc<dyn Bus> = if NatsBus::handles(control) {
        Arc::new(NatsBus::new(control, "bench", "bench-eventlog").map_err(anyhow::Error::msg)?)
    } else {
        let credential = Credential::from_env()?
            .ok_or_else(|| anyhow::anyhow!("TESSERA_CREDENTIAL is not set"))?;
        Arc::new(ControlBus::new(control, &credential))
    };
    let topic = topic.clone();
    let group = "bench";

    let start = Instant::now();
    let mut tasks = Vec::new();
    let per = events / publishers;
    for p in 0..publishers {
        let (bus, topic) = (bus.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            while sent < per {
                let n = batch.min(per - sent);
                let chunk: Vec<Event> = (0..n)
                    .map(|i| {
                        Event::new(
                            "/bench",
                            "bench.tick",
                            &format!("key-{p}-{}", (sent + i) % 16),
                            serde_json::json!({ "at": now_ns() }),
                        )
                    })
                    .collect();
                bus.publish(&topic, &chunk).await.expect("publish");
                sent += n;
            }
        }));
    }
    let total = per * publishers;
    let mut latencies = Vec::with_capacity(total);
    while latencies.len() < total {
        let got = bus
            .fetch(
                &topic,
                group,
                "bench-consumer",
                1000,
                Duration::from_millis(500),
            )
            .await?;
        let received = now_ns();
        for part in got.parts {
            let mut last = None;
            for (offset, event) in part.events {
                let event = event.map_err(|e| anyhow::anyhow!(e))?;
                let at = event.data["at"].as_u64().unwrap_or(received);
                latencies.push(received.saturating_sub(at));
                last = Some(offset);
            }
            if let Some(last) = last {
                bus.commit(&topic, group, "bench-consumer", part.partition, last + 1)
                    .await?;
            }
        }
        if start.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("timed out with {} of {total} consumed", latencies.len());
        }
    }
    let elapsed = start.elapsed();
    for t in tasks {
        t.await?;
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)] as f64 / 1e6
    };
    println!(
        "{}",
        serde_json::json!({
            "events": total, "batch": batch, "publishers": publishers,
            "events_per_sec": total as f64 / elapsed.as_secs_f64(),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": pct(1.0),
        })
    );
    Ok(())
}

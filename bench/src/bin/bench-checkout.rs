//! An open-model, constant-rate load generator for checkouts (like wrk2: each request has a
//! due time, and latency is measured from when it was due, not from when it was sent, so a
//! slow system cannot hide its queueing — no coordinated omission).
//!
//! `bench-checkout <gateway-url> <rate/s> <seconds> <product> <token>...` places orders at
//! `rate` per second for `seconds`, spread over the given users' tokens, then waits for every
//! order to settle and prints one JSON line: orders sent, accepted, confirmed, confirmed per
//! second of the run, and the latency percentiles from due time to CONFIRMED (the order's own
//! `updatedAt`, on the same clock), and the worst latency of the orders due in each 100 ms.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        anyhow::bail!("usage: bench-checkout <gateway-url> <rate> <seconds> <product> <token>...");
    }
    let (gateway, rate, seconds, product) = (
        args[1].clone(),
        args[2].parse::<u64>()?,
        args[3].parse::<u64>()?,
        args[4].clone(),
    );
    let tokens: Vec<String> = args[5..].to_vec();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .timeout(Duration::from_secs(30))
        .build()?;
    let total = rate * seconds;
    let start = Instant::now();
    let start_ms = now_ms();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let due = Duration::from_nanos(n * 1_000_000_000 / rate);
        tokio::time::sleep_until((start + due).into()).await;
        let due_ms = start_ms + due.as_millis() as i64;
        let (client, url, token) = (
            client.clone(),
            format!("{gateway}/api/orders"),
            tokens[n as usize % tokens.len()].clone(),
        );
        let body = serde_json::json!({"items": [{"productId": product, "quantity": 1}]});
        tasks.spawn(async move {
            let resp = client
                .post(url)
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .ok()?;
            if resp.status().as_u16() != 202 {
                return None;
            }
            let v: serde_json::Value = resp.json().await.ok()?;
            Some((v["data"]["orderId"].as_str()?.to_string(), token, due_ms))
        });
    }
    let mut accepted = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(order)) = r {
            accepted.push(order);
        }
    }
    // Every accepted order settles; latency runs from its due time to its final event.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut latencies = Vec::new();
    // The worst latency among the orders due in each 100 ms of the run: a stall anywhere in
    // the system shows as a slice standing out, and stalls that recur show their period.
    let mut slices = vec![0.0f64; (seconds * 10) as usize];
    let (mut confirmed, mut rejected, mut last_confirmed_ms) = (0u64, 0u64, start_ms);
    for (id, token, due_ms) in &accepted {
        loop {
            let v: serde_json::Value = client
                .get(format!("{gateway}/api/orders/{id}"))
                .bearer_auth(token)
                .send()
                .await?
                .json()
                .await?;
            match v["data"]["status"].as_str() {
                Some("CONFIRMED") => {
                    let at = v["data"]["updatedAt"].as_i64().unwrap_or(0);
                    let latency = (at - due_ms).max(0) as f64;
                    latencies.push(latency);
                    if let Some(worst) = slices.get_mut(((due_ms - start_ms) / 100).max(0) as usize)
                    {
                        *worst = f64::max(*worst, latency);
                    }
                    last_confirmed_ms = last_confirmed_ms.max(at);
                    confirmed += 1;
                    break;
                }
                Some("REJECTED") => {
                    rejected += 1;
                    break;
                }
                _ if Instant::now() > deadline => anyhow::bail!("order {id} never settled"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let pct = |p: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
        }
    };
    let span_s = ((last_confirmed_ms - start_ms) as f64 / 1000.0).max(seconds as f64);
    println!(
        "{}",
        serde_json::json!({
            "rate": rate, "seconds": seconds, "sent": total, "accepted": accepted.len(),
            "confirmed": confirmed, "rejected": rejected,
            "confirmed_per_sec": confirmed as f64 / span_s,
            "p50_ms": pct(0.5), "p90_ms": pct(0.9), "p99_ms": pct(0.99), "max_ms": pct(1.0),
            "worst_ms_per_100ms": slices,
        })
    );
    Ok(())
}

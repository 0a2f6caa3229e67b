//! `tessera rollout`: a new version of a service, beside the old, traffic shifted step by step
//! and rolled back by itself on a regression (`tessera_control::rollouts`, `docs/rollouts.md`).
//!
//!     tessera rollout catalog --env CATALOG_PAGE=50 --canary 10,50,100 --step 30s
//!     tessera rollout order --command "target/release/shop-order" --blue-green
//!     tessera rollout status [service]
//!     tessera rollout abort <service>
//!
//! The command follows the rollout until it ends (one line per step: each version's error
//! rate, p99 and requests, and the verdict), and fails when it was rolled back; `--detach`
//! returns once it has started.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tessera_manifest::Manifest;

use crate::control;

#[derive(clap::Args)]
pub struct RolloutArgs {
    /// The service to roll out, or `status` [service], or `abort` <service>.
    target: String,
    /// With `status` or `abort`: the service.
    service: Option<String>,
    /// The new version's program and arguments (split on white space); default: the running
    /// version's.
    #[arg(long)]
    command: Option<String>,
    /// A setting of the new version, over the running one's: `KEY=VALUE`. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The new version's weight at each step, in percent (ending at 100).
    #[arg(long, value_delimiter = ',', default_value = "10,50,100")]
    canary: Vec<u32>,
    /// Blue-green: all traffic at once, after the old version is measured alone (0 → 100).
    #[arg(long)]
    blue_green: bool,
    /// How long each step lasts (`30s`, `500ms`, `2m`).
    #[arg(long, default_value = "30s")]
    step: String,
    /// The new version's name (`TESSERA_VERSION`); default `r<id>`.
    #[arg(long)]
    version: Option<String>,
    /// The most the new version's error rate may exceed the old one's, in points.
    #[arg(long, default_value_t = 5.0)]
    max_error_increase: f64,
    /// The most the new version's p99 may be, as a multiple of the old one's.
    #[arg(long, default_value_t = 2.0)]
    max_p99_ratio: f64,
    /// Return once the rollout has started, rather than follow it.
    #[arg(long)]
    detach: bool,
}

pub async fn run(manifest: &Manifest, state_dir: &Path, args: RolloutArgs) -> anyhow::Result<()> {
    let (http, base) = control::client(manifest, state_dir)?;
    match args.target.as_str() {
        "status" => {
            let answer = match &args.service {
                Some(service) => {
                    control::get(&http, &format!("{base}/v1/rollouts/{service}")).await?
                }
                None => control::get(&http, &format!("{base}/v1/rollouts")).await?,
            };
            match answer["rollouts"].as_array() {
                Some(list) if list.is_empty() => println!("no rollout yet"),
                Some(list) => list.iter().for_each(|r| println!("{}", describe(r))),
                None => {
                    println!("{}", describe(&answer));
                    for step in answer["reports"].as_array().into_iter().flatten() {
                        println!("  {}", step_line(step));
                    }
                }
            }
            Ok(())
        }
        "abort" => {
            let service = args.service.context("tessera rollout abort <service>")?;
            control::call(
                &http,
                reqwest::Method::POST,
                &format!("{base}/v1/rollouts/{service}/abort"),
                None,
            )
            .await?;
            println!("{service}: aborting; the old version takes all traffic again");
            Ok(())
        }
        service => start(&http, &base, service, &args).await,
    }
}

async fn start(
    http: &reqwest::Client,
    base: &str,
    service: &str,
    args: &RolloutArgs,
) -> anyhow::Result<()> {
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--env {pair:?}: KEY=VALUE"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let steps = if args.blue_green {
        vec![100]
    } else {
        args.canary.clone()
    };
    let body = json!({
        "command": args.command.as_ref().map(|c| c.split_whitespace().collect::<Vec<_>>()),
        "env": env,
        "version": args.version,
        "steps": steps,
        "step_ms": duration_ms(&args.step)?,
        "max_error_increase": args.max_error_increase / 100.0,
        "max_p99_ratio": args.max_p99_ratio,
    });
    let url = format!("{base}/v1/rollouts/{service}");
    let started = control::call(http, reqwest::Method::POST, &url, Some(&body)).await?;
    println!(
        "{service}: rolling out {} beside {} (steps {:?})",
        started["to"].as_str().unwrap_or("?"),
        started["from"].as_str().unwrap_or("?"),
        steps
    );
    if args.detach {
        return Ok(());
    }
    let mut shown = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = control::get(http, &url).await?;
        let reports = now["reports"].as_array().cloned().unwrap_or_default();
        for step in &reports[shown.min(reports.len())..] {
            println!("  {}", step_line(step));
        }
        shown = reports.len();
        if now["ended_ms"].is_null() {
            continue;
        }
        println!("{}", describe(&now));
        return match now["state"].as_str() {
            Some("completed") => Ok(()),
            _ => anyhow::bail!(
                "{service}: {}",
                now["reason"].as_str().unwrap_or("not completed")
            ),
        };
    }
}

/// `30s`, `500ms`, `2m`, or plain milliseconds.
fn duration_ms(text: &str) -> anyhow::Result<u64> {
    let bad = || anyhow::anyhow!("--step {text:?}: a duration such as 30s, 500ms or 2m");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let scale: u64 = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        _ => return Err(bad()),
    };
    n.checked_mul(scale).ok_or_else(bad)
}

fn describe(r: &Value) -> String {
    let mut line = format!(
        "{}: {} → {} {} (at {}%)",
        r["service"].as_str().unwrap_or("?"),
        r["from"].as_str().unwrap_or("?"),
        r["to"].as_str().unwrap_or("?"),
        r["state"].as_str().unwrap_or("?").replace('_', " "),
        r["weight"]
    );
    if let Some(reason) = r["reason"].as_str() {
        line.push_str(&format!(": {reason}"));
    }
    line
}

fn step_line(step: &Value) -> String {
    let side = |m: &Value| {
        format!(
            "{:.1}% errors, p99 {}, {} requests",
            m["error_rate"].as_f64().unwrap_or(0.0) * 100.0,
            m["p99_ms"]
                .as_f64()
                .map_or_else(|| "-".to_string(), |p| format!("{p:.1} ms")),
            m["requests"].as_f64().unwrap_or(0.0) as u64
        )
    };
    format!(
        "step {}%: old {}; new {}: {}",
        step["weight"],
        side(&step["old"]),
        side(&step["new"]),
        step["verdict"].as_str().unwrap_or("?")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_last_a_duration() {
        assert_eq!(duration_ms("30s").unwrap(), 30_000);
        assert_eq!(duration_ms("500ms").unwrap(), 500);
        assert_eq!(duration_ms("2m").unwrap(), 120_000);
        assert_eq!(duration_ms("750").unwrap(), 750);
        assert!(duration_ms("soon").is_err());
        assert!(duration_ms("3h").is_err());
        assert!(duration_ms("99999999999999999m").is_err());
    }
}

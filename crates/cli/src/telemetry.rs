//! `tessera trace <id>` and `tessera logs`: the collector's traces and log lines in the
//! terminal, read as an operator (the admin credential from the state directory), from the
//! control plane's query API (`docs/observability.md`).

use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tessera_manifest::Manifest;

use crate::control::{client, get};
use crate::human;

fn color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Prints the waterfall of trace `id`, and its log lines.
pub async fn trace(manifest: &Manifest, state_dir: &Path, id: &str) -> anyhow::Result<()> {
    let (http, base) = client(manifest, state_dir)?;
    let trace = get(&http, &format!("{base}/v1/telemetry/traces/{}", id.trim())).await?;
    print!("{}", waterfall(&trace, 40, color()));
    let logs = trace["logs"].as_array().cloned().unwrap_or_default();
    if !logs.is_empty() {
        println!();
        for line in &logs {
            println!("{}", log_line(line, color()));
        }
    }
    Ok(())
}

/// What to show of the log lines.
pub struct LogsQuery {
    pub service: Option<String>,
    pub trace: Option<String>,
    pub level: Option<String>,
    pub grep: Option<String>,
    pub lines: u32,
    pub follow: bool,
}

/// Prints the last log lines the query keeps (oldest first); with `follow`, then every new
/// one as it arrives.
pub async fn logs(manifest: &Manifest, state_dir: &Path, q: LogsQuery) -> anyhow::Result<()> {
    let (http, base) = client(manifest, state_dir)?;
    let mut params = vec![("limit".to_string(), q.lines.to_string())];
    for (key, value) in [
        ("service", &q.service),
        ("trace_id", &q.trace),
        ("level", &q.level),
        ("text", &q.grep),
    ] {
        if let Some(v) = value {
            params.push((key.to_string(), v.clone()));
        }
    }
    let query = |extra: &[(String, String)]| {
        let mut url = reqwest::Url::parse(&format!("{base}/v1/telemetry/logs")).expect("a URL");
        url.query_pairs_mut()
            .extend_pairs(params.iter().chain(extra));
        url.to_string()
    };
    let first = get(&http, &query(&[])).await?;
    let mut lines = first["logs"].as_array().cloned().unwrap_or_default();
    // Newest first from the API (oldest first for a trace): printed oldest first.
    if q.trace.is_none() {
        lines.reverse();
    }
    for line in &lines {
        println!("{}", log_line(line, color()));
    }
    if !q.follow {
        return Ok(());
    }
    let mut last = first["last"].as_i64().unwrap_or(0);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let since = tessera::unix_now_ms() - 24 * 3600 * 1000;
        let next = match get(
            &http,
            &query(&[
                ("after".into(), last.to_string()),
                ("since".into(), since.to_string()),
            ]),
        )
        .await
        {
            Ok(next) => next,
            Err(e) => {
                eprintln!("{e}; trying again");
                continue;
            }
        };
        for line in next["logs"].as_array().into_iter().flatten() {
            println!("{}", log_line(line, color()));
        }
        last = next["last"].as_i64().unwrap_or(last);
    }
}

/// One line of the collector's for a person.
fn log_line(line: &Value, color: bool) -> String {
    let ts_us = line["ts_us"].as_i64().unwrap_or(0);
    let secs = ts_us.div_euclid(1_000_000);
    let time = format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs.rem_euclid(86_400) / 3600,
        secs.rem_euclid(3600) / 60,
        secs.rem_euclid(60),
        ts_us.rem_euclid(1_000_000) / 1000
    );
    let empty = serde_json::Map::new();
    let fields = line["attributes"].as_object().unwrap_or(&empty);
    let who = line["instance"]
        .as_str()
        .or_else(|| line["service"].as_str())
        .unwrap_or("-");
    human::render(
        &time,
        Some(who),
        line["level"].as_str().unwrap_or("INFO"),
        line["body"].as_str().unwrap_or(""),
        fields,
        line["trace_id"].as_str(),
        color,
    )
}

/// A trace's spans as a tree on a time axis `width` columns wide:
/// `name  service  |   ████      |  12.3 ms`, children under their parent by start time.
pub fn waterfall(trace: &Value, width: usize, color: bool) -> String {
    let spans = trace["spans"].as_array().cloned().unwrap_or_default();
    let id = |s: &Value| s["span_id"].as_str().unwrap_or("").to_string();
    let ids: std::collections::HashSet<String> = spans.iter().map(id).collect();
    let start = spans
        .iter()
        .filter_map(|s| s["start_us"].as_i64())
        .min()
        .unwrap_or(0);
    let end = spans
        .iter()
        .filter_map(|s| Some(s["start_us"].as_i64()? + s["duration_us"].as_i64()?))
        .max()
        .unwrap_or(start);
    let total = (end - start).max(1);
    let services: std::collections::BTreeSet<&str> =
        spans.iter().filter_map(|s| s["service"].as_str()).collect();
    let mut out = format!(
        "trace {}  {}  {} spans  {} services\n",
        trace["trace_id"].as_str().unwrap_or("?"),
        duration(total),
        spans.len(),
        services.len()
    );
    // Children by parent, each list by start; roots are spans whose parent is not here.
    let mut children: std::collections::HashMap<String, Vec<&Value>> = Default::default();
    let mut roots = Vec::new();
    for s in &spans {
        match s["parent_id"].as_str().filter(|p| ids.contains(*p)) {
            Some(p) => children.entry(p.to_string()).or_default().push(s),
            None => roots.push(s),
        }
    }
    let by_start = |v: &mut Vec<&Value>| v.sort_by_key(|s| s["start_us"].as_i64().unwrap_or(0));
    by_start(&mut roots);
    for list in children.values_mut() {
        by_start(list);
    }
    let mut stack: Vec<(&Value, usize)> = roots.into_iter().rev().map(|s| (s, 0)).collect();
    while let Some((s, depth)) = stack.pop() {
        let offset = s["start_us"].as_i64().unwrap_or(start) - start;
        let length = s["duration_us"].as_i64().unwrap_or(0);
        let from = (offset as usize * width) / total as usize;
        let cells = ((length as usize * width).div_ceil(total as usize)).max(1);
        let from = from.min(width - 1);
        let cells = cells.min(width - from);
        let bar = format!(
            "{}{}{}",
            " ".repeat(from),
            "█".repeat(cells),
            " ".repeat(width - from - cells)
        );
        let failed = s["error"].as_bool().unwrap_or(false);
        let mut name = format!(
            "{}{}{}",
            "  ".repeat(depth),
            if failed { "✗ " } else { "" },
            human::printable(s["name"].as_str().unwrap_or("?"))
        );
        if name.chars().count() > 46 {
            name = name.chars().take(45).collect::<String>() + "…";
        }
        let line = format!(
            "{name:<46} {:<16} |{bar}| {:>9}",
            human::printable(s["service"].as_str().unwrap_or("?")),
            duration(length)
        );
        if color && failed {
            out.push_str(&format!("\x1b[31m{line}\x1b[0m\n"));
        } else {
            out.push_str(&line);
            out.push('\n');
        }
        if let Some(kids) = children.get(&id(s)) {
            for k in kids.iter().rev() {
                stack.push((k, depth + 1));
            }
        }
    }
    out
}

fn duration(us: i64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.1} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_waterfall_puts_children_under_their_parent_by_start_on_a_shared_axis() {
        let trace = json!({"trace_id": "ab", "spans": [
            {"span_id": "1", "parent_id": "client", "service": "gateway", "name": "POST /api/orders",
             "start_us": 1000, "duration_us": 1000, "error": false},
            {"span_id": "3", "parent_id": "1", "service": "order", "name": "later child",
             "start_us": 1500, "duration_us": 500, "error": true},
            {"span_id": "2", "parent_id": "1", "service": "order", "name": "first child",
             "start_us": 1000, "duration_us": 250, "error": false},
            {"span_id": "4", "parent_id": "2", "service": "catalog", "name": "grandchild",
             "start_us": 1100, "duration_us": 100, "error": false},
        ]});
        let out = waterfall(&trace, 20, false);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("trace ab  1.0 ms  4 spans  3 services"),
            "{out}"
        );
        assert!(lines[1].starts_with("POST /api/orders"), "{out}");
        assert!(lines[2].starts_with("  first child"), "{out}");
        assert!(lines[3].starts_with("    grandchild"), "{out}");
        assert!(lines[4].starts_with("  ✗ later child"), "{out}");
        // The root spans the whole axis; the later child its second half.
        assert!(lines[1].contains(&format!("|{}|", "█".repeat(20))), "{out}");
        assert!(
            lines[4].contains(&format!("|{}{}|", " ".repeat(10), "█".repeat(10))),
            "{out}"
        );
        assert!(lines[4].ends_with("500 µs"), "{out}");
    }
}

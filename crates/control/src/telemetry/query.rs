//! `GET /v1/telemetry/traces` (search), `GET /v1/telemetry/traces/{trace_id}` (one trace,
//! every span and its log lines) and `GET /v1/telemetry/logs` (log lines): the supervisor's
//! and an admin's.
//!
//! A search finds the traces having a span that matches every filter given (`service`,
//! `route`, `name`, `status`, `min_ms`/`max_ms` of the span's duration, within
//! `since`..`until`, Unix ms), newest first, and sums each up. Bad input is a 400 naming it:
//! ranges wider than [`MAX_RANGE_MS`], limits past [`MAX_LIMIT`], ids that are not 32 hex
//! digits.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};
use tessera::ApiError;
use tessera::store::query_as;

use super::Telemetry;
use crate::policy::Caller;

/// The widest time range a search may cover: 31 days.
pub const MAX_RANGE_MS: i64 = 31 * 24 * 3600 * 1000;
/// The most traces a search answers with.
pub const MAX_LIMIT: i64 = 1000;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TraceQuery {
    service: Option<String>,
    route: Option<String>,
    name: Option<String>,
    /// `error`, `ok`, or an HTTP status code.
    status: Option<String>,
    min_ms: Option<String>,
    max_ms: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
}

/// A bound value of the search.
enum Arg {
    Text(String),
    Int(i64),
}

fn number(name: &str, value: &Option<String>) -> Result<Option<i64>, ApiError> {
    value
        .as_deref()
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("{name} must be a whole number, 0 or more, not {v:?}"),
                    )
                })
        })
        .transpose()
}

/// A search's time window (Unix ms; default the last hour, at most [`MAX_RANGE_MS`]) and
/// how many answers (`default`, from 1 to [`MAX_LIMIT`]).
fn window(
    since: &Option<String>,
    until: &Option<String>,
    limit: &Option<String>,
    default: i64,
) -> Result<(i64, i64, i64), ApiError> {
    let until = number("until", until)?.unwrap_or_else(tessera::unix_now_ms);
    let since = number("since", since)?.unwrap_or(until.saturating_sub(3600 * 1000));
    if since > until {
        return Err(ApiError::bad_request(
            "invalid_query",
            "since must not be after until",
        ));
    }
    if until - since > MAX_RANGE_MS {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "the range is too wide: at most {} days",
                MAX_RANGE_MS / 86_400_000
            ),
        ));
    }
    let limit = number("limit", limit)?.unwrap_or(default);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be from 1 to {MAX_LIMIT}"),
        ));
    }
    Ok((since, until, limit))
}

pub async fn traces(
    State(telemetry): State<Telemetry>,
    caller: Caller,
    tessera::Query(q): tessera::Query<TraceQuery>,
) -> Result<Json<JsonValue>, ApiError> {
    caller.may_inspect()?;
    let (since, until, limit) = window(&q.since, &q.until, &q.limit, 50)?;
    let mut filters = vec!["start_ns >= $1", "start_ns <= $2"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    let mut args = vec![
        Arg::Int(since.saturating_mul(1_000_000)),
        Arg::Int(until.saturating_mul(1_000_000)),
    ];
    let mut add = |clause: &str, arg: Arg| {
        args.push(arg);
        filters.push(clause.replace('?', &format!("${}", args.len())));
    };
    if let Some(s) = q.service.filter(|s| !s.is_empty()) {
        add("service = ?", Arg::Text(s));
    }
    if let Some(r) = q.route.filter(|s| !s.is_empty()) {
        add("http_route = ?", Arg::Text(r));
    }
    if let Some(n) = q.name.filter(|s| !s.is_empty()) {
        add("instr(name, ?) > 0", Arg::Text(n));
    }
    match q.status.as_deref().map(str::trim) {
        None | Some("") => {}
        Some("error") => add("error = ?", Arg::Int(1)),
        Some("ok") => add("error = ?", Arg::Int(0)),
        Some(code) => match code.parse::<i64>() {
            Ok(code) if (100..=599).contains(&code) => add("http_status = ?", Arg::Int(code)),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("status is error, ok or an HTTP status code, not {code:?}"),
                ));
            }
        },
    }
    if let Some(ms) = number("min_ms", &q.min_ms)? {
        add("duration_ns >= ?", Arg::Int(ms.saturating_mul(1_000_000)));
    }
    if let Some(ms) = number("max_ms", &q.max_ms)? {
        add("duration_ns <= ?", Arg::Int(ms.saturating_mul(1_000_000)));
    }
    let sql = format!(
        "SELECT trace_id, MAX(start_ns) AS latest FROM spans WHERE {} GROUP BY trace_id ORDER BY latest DESC LIMIT {limit}",
        filters.join(" AND ")
    );
    let mut found = query_as::<(String, i64)>(&sql);
    for arg in &args {
        found = match arg {
            Arg::Text(s) => found.bind(s),
            Arg::Int(n) => found.bind(*n),
        };
    }
    let ids: Vec<String> = found
        .fetch_all(telemetry.db().pool())
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let summaries = telemetry.summaries(&ids).await?;
    Ok(Json(json!({ "traces": summaries })))
}

impl Telemetry {
    /// Each trace of `ids` summed up, in the order given.
    async fn summaries(&self, ids: &[String]) -> Result<Vec<JsonValue>, tessera::DbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT trace_id, parent_id, service, name, start_ns, end_ns, error, http_status FROM spans WHERE trace_id IN ({}) ORDER BY start_ns",
            placeholders.join(", ")
        );
        type SpanRow = (
            String,
            Option<String>,
            String,
            String,
            i64,
            i64,
            bool,
            Option<i64>,
        );
        let mut rows = query_as::<SpanRow>(&sql);
        for id in ids {
            rows = rows.bind(id);
        }
        let mut by_trace: BTreeMap<String, Vec<SpanRow>> = BTreeMap::new();
        for row in rows.fetch_all(self.db().pool()).await? {
            by_trace.entry(row.0.clone()).or_default().push(row);
        }
        Ok(ids
            .iter()
            .filter_map(|id| {
                let spans = by_trace.get(id)?;
                // The root: the span without a parent, else the earliest (a partial trace).
                let root = spans.iter().find(|s| s.1.is_none()).unwrap_or(&spans[0]);
                let start = spans.iter().map(|s| s.4).min().unwrap_or(0);
                let end = spans.iter().map(|s| s.5).max().unwrap_or(start);
                let services: BTreeSet<&str> = spans.iter().map(|s| s.2.as_str()).collect();
                Some(json!({
                    "trace_id": id,
                    "root": { "service": root.2, "name": root.3, "http_status": root.7 },
                    "start_us": start / 1000,
                    "duration_us": (end - start) / 1000,
                    "spans": spans.len(),
                    "errors": spans.iter().filter(|s| s.6).count(),
                    "services": services,
                }))
            })
            .collect())
    }
}

/// 32 hex digits, lowercased.
pub(super) fn trace_id_of(raw: &str) -> Result<String, ApiError> {
    if raw.len() == 32 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(raw.to_ascii_lowercase())
    } else {
        Err(ApiError::bad_request(
            "invalid_trace_id",
            "a trace id is 32 hex digits",
        ))
    }
}

/// OTLP's span kinds by number.
fn kind_name(kind: i64) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

pub async fn trace(
    State(telemetry): State<Telemetry>,
    caller: Caller,
    tessera::Path(trace_id): tessera::Path<String>,
) -> Result<Json<JsonValue>, ApiError> {
    caller.may_inspect()?;
    let trace_id = trace_id_of(&trace_id)?;
    type Row = (
        String,
        Option<String>,
        String,
        Option<String>,
        String,
        i64,
        i64,
        i64,
        bool,
        Option<String>,
        String,
    );
    let rows: Vec<Row> = query_as(
        "SELECT span_id, parent_id, service, instance, name, kind, start_ns, end_ns, error, status_message, attributes FROM spans WHERE trace_id = $1 ORDER BY start_ns, span_id LIMIT 10000",
    )
    .bind(&trace_id)
    .fetch_all(telemetry.db().pool())
    .await?;
    if rows.is_empty() {
        return Err(ApiError::not_found(format!("no trace {trace_id}")));
    }
    let spans: Vec<JsonValue> = rows
        .into_iter()
        .map(
            |(span_id, parent_id, service, instance, name, kind, start, end, error, message, attributes)| {
                json!({
                    "span_id": span_id,
                    "parent_id": parent_id,
                    "service": service,
                    "instance": instance,
                    "name": name,
                    "kind": kind_name(kind),
                    "start_us": start / 1000,
                    "duration_us": (end - start) / 1000,
                    "error": error,
                    "status_message": message,
                    "attributes": serde_json::from_str::<JsonValue>(&attributes).unwrap_or(JsonValue::Null),
                })
            },
        )
        .collect();
    let logs = telemetry
        .log_lines(&LogFilter {
            trace_id: Some(trace_id.clone()),
            since_ns: 0,
            until_ns: i64::MAX,
            ..LogFilter::default()
        })
        .await?;
    Ok(Json(
        json!({ "trace_id": trace_id, "spans": spans, "logs": logs }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    service: Option<String>,
    /// The least severe level shown: trace, debug, info, warn, error.
    level: Option<String>,
    text: Option<String>,
    trace_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Only lines after this one (a live tail), oldest first.
    after: Option<String>,
    limit: Option<String>,
}

/// What a search of log lines keeps.
#[derive(Default)]
pub(super) struct LogFilter {
    service: Option<String>,
    min_severity: i64,
    text: Option<String>,
    trace_id: Option<String>,
    since_ns: i64,
    until_ns: i64,
    after: Option<i64>,
    limit: i64,
}

pub async fn logs(
    State(telemetry): State<Telemetry>,
    caller: Caller,
    tessera::Query(q): tessera::Query<LogQuery>,
) -> Result<Json<JsonValue>, ApiError> {
    caller.may_inspect()?;
    let (since, until, limit) = window(&q.since, &q.until, &q.limit, 100)?;
    let min_severity = match q.level.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("trace") => 0,
        Some("debug") => 5,
        Some("info") => 9,
        Some("warn") => 13,
        Some("error") => 17,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("level is trace, debug, info, warn or error, not {other:?}"),
            ));
        }
    };
    let trace_id = q.trace_id.as_deref().map(trace_id_of).transpose()?;
    let filter = LogFilter {
        service: q.service.filter(|s| !s.is_empty()),
        min_severity,
        text: q.text.filter(|s| !s.is_empty()),
        trace_id,
        since_ns: since.saturating_mul(1_000_000),
        until_ns: until.saturating_mul(1_000_000),
        after: number("after", &q.after)?,
        limit,
    };
    let lines = telemetry.log_lines(&filter).await?;
    let last = lines
        .iter()
        .filter_map(|l| l["id"].as_i64())
        .max()
        .or(filter.after);
    Ok(Json(json!({ "logs": lines, "last": last })))
}

impl Telemetry {
    /// The log lines `filter` keeps: newest first, or after `filter.after` oldest first.
    pub(super) async fn log_lines(
        &self,
        filter: &LogFilter,
    ) -> Result<Vec<JsonValue>, tessera::DbError> {
        // A tail (after a line) takes every later line whatever its time: one stamped ahead
        // of this clock is not skipped for good.
        let (since, until) = match filter.after {
            Some(_) => (i64::MIN, i64::MAX),
            None => (filter.since_ns, filter.until_ns),
        };
        let mut clauses = vec!["ts_ns >= $1".to_string(), "ts_ns <= $2".to_string()];
        let mut args = vec![Arg::Int(since), Arg::Int(until)];
        let mut add = |clause: &str, arg: Arg| {
            args.push(arg);
            clauses.push(clause.replace('?', &format!("${}", args.len())));
        };
        if let Some(s) = &filter.service {
            add("service = ?", Arg::Text(s.clone()));
        }
        if filter.min_severity > 0 {
            add("severity >= ?", Arg::Int(filter.min_severity));
        }
        if let Some(t) = &filter.text {
            add("instr(body, ?) > 0", Arg::Text(t.clone()));
        }
        if let Some(t) = &filter.trace_id {
            add("trace_id = ?", Arg::Text(t.clone()));
        }
        if let Some(after) = filter.after {
            add("id > ?", Arg::Int(after));
        }
        let limit = if filter.limit > 0 {
            filter.limit
        } else {
            MAX_LIMIT
        };
        let order = if filter.after.is_some() || filter.trace_id.is_some() {
            "ASC"
        } else {
            "DESC"
        };
        let sql = format!(
            "SELECT id, ts_ns, service, instance, level, body, trace_id, span_id, attributes FROM logs WHERE {} ORDER BY id {order} LIMIT {limit}",
            clauses.join(" AND ")
        );
        type Row = (
            i64,
            i64,
            String,
            Option<String>,
            String,
            String,
            Option<String>,
            Option<String>,
            String,
        );
        let mut rows = query_as::<Row>(&sql);
        for arg in &args {
            rows = match arg {
                Arg::Text(s) => rows.bind(s),
                Arg::Int(n) => rows.bind(*n),
            };
        }
        Ok(rows
            .fetch_all(self.db().pool())
            .await?
            .into_iter()
            .map(
                |(id, ts, service, instance, level, body, trace_id, span_id, attributes)| {
                    json!({
                        "id": id,
                        "ts_us": ts / 1000,
                        "service": service,
                        "instance": instance,
                        "level": level,
                        "body": body,
                        "trace_id": trace_id,
                        "span_id": span_id,
                        "attributes": serde_json::from_str::<JsonValue>(&attributes).unwrap_or(JsonValue::Null),
                    })
                },
            )
            .collect())
    }
}

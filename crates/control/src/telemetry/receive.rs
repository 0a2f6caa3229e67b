//! `POST /v1/traces` and `POST /v1/logs`: OTLP/HTTP's trace and log export, protobuf
//! (`application/x-protobuf`) or JSON (`application/json`), as any OpenTelemetry SDK sends it.
//!
//! Each span becomes a row; a span whose ids are not OTLP's (16 and 8 bytes, not all zero) is
//! rejected and counted in the answer's `partialSuccess`, as the protocol asks; a span sent
//! twice (an exporter retrying after a lost answer) is stored once. A service's spans are
//! stored under its own name, whatever `service.name` its resource says, and a span is its
//! service's: another posting the same ids adds a row of its own, never replaces it. Times
//! ahead of the collector's clock by more than a minute are taken as now.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prost::Message;
use serde_json::{Map, Value as Json};
use tessera::ApiError;
use tessera::identity::Principal;
use tessera::otlp::proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use tessera::otlp::proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tessera::otlp::proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tessera::otlp::proto::tonic::trace::v1::status::StatusCode as SpanStatus;

use super::{Telemetry, hex};

/// How far ahead of the collector's clock a time may be (clocks drift) before it is taken as
/// now.
const FUTURE_NS: i64 = 60 * 1_000_000_000;

/// A span as stored.
pub(crate) struct Row {
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: Option<String>,
    pub service: String,
    pub instance: Option<String>,
    pub name: String,
    pub kind: i64,
    pub start_ns: i64,
    pub end_ns: i64,
    pub error: bool,
    pub status_message: Option<String>,
    pub http_route: Option<String>,
    pub http_status: Option<i64>,
    pub attributes: String,
}

/// The request of a post: OTLP's protobuf or JSON, as its content type says; whether it was
/// JSON (the answer is written the same way).
fn decode<T: Message + Default + serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(T, bool), ApiError> {
    let json = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(t) if t.starts_with("application/json") => true,
        Some(t) if t.starts_with("application/x-protobuf") => false,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "OTLP/HTTP takes application/x-protobuf or application/json",
            ));
        }
    };
    if headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity")
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "compressed bodies are not taken: send them uncompressed (the exporter's compression 'none')",
        ));
    }
    let request = if json {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request("invalid_otlp", format!("not an OTLP/JSON request: {e}"))
        })?
    } else {
        T::decode(body).map_err(|e| {
            ApiError::bad_request("invalid_otlp", format!("not an OTLP request: {e}"))
        })?
    };
    Ok((request, json))
}

/// OTLP's answer, written as the request was.
fn answer<T: Message + serde::Serialize>(answer: &T, json: bool) -> Response {
    if json {
        (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(answer).unwrap_or_else(|_| b"{}".to_vec()),
        )
            .into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            answer.encode_to_vec(),
        )
            .into_response()
    }
}

/// Whose telemetry a post is: a service's and the gateway's are their own, whatever their
/// resource claims; the operators' (a CLI, a test) are what the resource says.
fn owner(principal: &Principal, claimed: Option<String>) -> String {
    match principal {
        Principal::Service(name) => name.clone(),
        Principal::Gateway => "gateway".to_string(),
        Principal::Supervisor | Principal::Admin => {
            claimed.unwrap_or_else(|| "unknown".to_string())
        }
    }
}

pub async fn traces(
    State(telemetry): State<Telemetry>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (request, json) = decode::<ExportTraceServiceRequest>(&headers, &body)?;
    let (rows, rejected) = rows_of(&principal, request);
    telemetry.store(&rows).await?;
    metrics::counter!("tessera_telemetry_spans_received_total").increment(rows.len() as u64);
    Ok(answer(
        &ExportTraceServiceResponse {
            partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: rejected,
                error_message: "spans need a 16-byte trace id and an 8-byte span id, not all zero"
                    .into(),
            }),
        },
        json,
    ))
}

pub async fn logs(
    State(telemetry): State<Telemetry>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (request, json) = decode::<ExportLogsServiceRequest>(&headers, &body)?;
    let rows = log_rows_of(&principal, request);
    telemetry.store_logs(&rows).await?;
    metrics::counter!("tessera_telemetry_logs_received_total").increment(rows.len() as u64);
    Ok(answer(
        &ExportLogsServiceResponse {
            partial_success: None,
        },
        json,
    ))
}

/// A log record as stored.
pub(super) struct LogRow {
    pub ts_ns: i64,
    pub service: String,
    pub instance: Option<String>,
    pub severity: i64,
    pub level: String,
    pub body: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub attributes: String,
}

/// The rows of a logs request. A record without a time takes the time it was observed, else
/// now; ids of the wrong size are left out (the record is kept, unattached to a trace).
fn log_rows_of(principal: &Principal, request: ExportLogsServiceRequest) -> Vec<LogRow> {
    let now = tessera::trace::unix_now_ns() as i64;
    let mut rows = Vec::new();
    for resource_logs in request.resource_logs {
        let resource = resource_logs
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        let service = owner(principal, string_attribute(&resource, "service.name"));
        let instance = string_attribute(&resource, "service.instance.id");
        for scope in resource_logs.scope_logs {
            for record in scope.log_records {
                let ts = [record.time_unix_nano, record.observed_time_unix_nano]
                    .into_iter()
                    .find(|t| *t > 0)
                    .map_or(now, |t| i64::try_from(t).unwrap_or(now))
                    .min(now.saturating_add(FUTURE_NS));
                let trace_id = <[u8; 16]>::try_from(record.trace_id.as_slice())
                    .ok()
                    .filter(|t| *t != [0; 16]);
                let span_id = <[u8; 8]>::try_from(record.span_id.as_slice())
                    .ok()
                    .filter(|s| *s != [0; 8]);
                let level = if record.severity_text.is_empty() {
                    level_of(record.severity_number).to_string()
                } else {
                    record.severity_text.to_ascii_uppercase()
                };
                let body = match value_json(record.body.as_ref()) {
                    Json::String(s) => s,
                    Json::Null => String::new(),
                    other => other.to_string(),
                };
                rows.push(LogRow {
                    ts_ns: ts,
                    service: service.clone(),
                    instance: instance.clone(),
                    severity: i64::from(record.severity_number),
                    level,
                    body,
                    trace_id: trace_id.map(|t| hex(&t)),
                    span_id: trace_id.and(span_id).map(|s| hex(&s)),
                    attributes: Json::Object(attributes_json(&record.attributes)).to_string(),
                });
            }
        }
    }
    rows
}

/// The level a severity number falls in (OpenTelemetry's ranges).
fn level_of(severity: i32) -> &'static str {
    match severity {
        1..=4 => "TRACE",
        5..=8 => "DEBUG",
        9..=12 => "INFO",
        13..=16 => "WARN",
        17..=24 => "ERROR",
        _ => "INFO",
    }
}

/// The rows of `request`, and how many spans were rejected.
fn rows_of(principal: &Principal, request: ExportTraceServiceRequest) -> (Vec<Row>, i64) {
    let now = tessera::trace::unix_now_ns() as i64;
    let mut rows = Vec::new();
    let mut rejected = 0;
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        // Who sent it decides whose spans they are: a service writes only its own.
        let service = owner(principal, string_attribute(&resource, "service.name"));
        let instance = string_attribute(&resource, "service.instance.id");
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let (Ok(trace_id), Ok(span_id)) = (
                    <[u8; 16]>::try_from(span.trace_id.as_slice()),
                    <[u8; 8]>::try_from(span.span_id.as_slice()),
                ) else {
                    rejected += 1;
                    continue;
                };
                if trace_id == [0; 16] || span_id == [0; 8] {
                    rejected += 1;
                    continue;
                }
                let parent_id = <[u8; 8]>::try_from(span.parent_span_id.as_slice())
                    .ok()
                    .filter(|p| *p != [0; 8])
                    .map(|p| hex(&p));
                let status = span.status.unwrap_or_default();
                let error = status.code == SpanStatus::Error as i32;
                let http_route = string_attribute(&span.attributes, "http.route");
                let http_status = int_attribute(&span.attributes, "http.response.status_code")
                    .or_else(|| int_attribute(&span.attributes, "http.status_code"));
                // Times from the future (a wrong clock, or a sender trying to outlive the
                // retention) are taken as now.
                let latest = now.saturating_add(FUTURE_NS);
                let start_ns = i64::try_from(span.start_time_unix_nano)
                    .unwrap_or(i64::MAX)
                    .min(latest);
                let end_ns = i64::try_from(span.end_time_unix_nano)
                    .unwrap_or(i64::MAX)
                    .clamp(start_ns, latest.max(start_ns));
                rows.push(Row {
                    trace_id: hex(&trace_id),
                    span_id: hex(&span_id),
                    parent_id,
                    service: service.clone(),
                    instance: instance.clone(),
                    name: span.name,
                    kind: i64::from(span.kind),
                    start_ns,
                    end_ns,
                    error,
                    status_message: (!status.message.is_empty()).then_some(status.message),
                    http_route,
                    http_status,
                    attributes: Json::Object(attributes_json(&span.attributes)).to_string(),
                });
            }
        }
    }
    (rows, rejected)
}

fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    match find(attributes, key)? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn int_attribute(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match find(attributes, key)? {
        any_value::Value::IntValue(n) => Some(*n),
        any_value::Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

/// Attributes as a JSON object (later keys win).
pub(super) fn attributes_json(attributes: &[KeyValue]) -> Map<String, Json> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), value_json(kv.value.as_ref())))
        .collect()
}

fn value_json(value: Option<&AnyValue>) -> Json {
    let Some(value) = value.and_then(|v| v.value.as_ref()) else {
        return Json::Null;
    };
    match value {
        any_value::Value::StringValue(s) => Json::String(s.clone()),
        any_value::Value::BoolValue(b) => Json::Bool(*b),
        any_value::Value::IntValue(n) => Json::from(*n),
        any_value::Value::DoubleValue(f) => Json::from(*f),
        any_value::Value::ArrayValue(a) => {
            Json::Array(a.values.iter().map(|v| value_json(Some(v))).collect())
        }
        any_value::Value::KvlistValue(l) => Json::Object(attributes_json(&l.values)),
        any_value::Value::BytesValue(b) => Json::String(hex(b)),
        any_value::Value::StringValueStrindex(_) => Json::Null,
    }
}

impl Telemetry {
    /// Stores `rows` in one transaction; a span already there is kept as it was.
    pub(super) async fn store(&self, rows: &[Row]) -> Result<(), tessera::DbError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.db().write_tx().await?;
        for r in rows {
            tessera::store::query(
                "INSERT OR IGNORE INTO spans (trace_id, span_id, parent_id, service, instance, name, kind, start_ns, end_ns, duration_ns, error, status_message, http_route, http_status, attributes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
            )
            .bind(&r.trace_id)
            .bind(&r.span_id)
            .bind(&r.parent_id)
            .bind(&r.service)
            .bind(&r.instance)
            .bind(&r.name)
            .bind(r.kind)
            .bind(r.start_ns)
            .bind(r.end_ns)
            .bind(r.end_ns - r.start_ns)
            .bind(r.error)
            .bind(&r.status_message)
            .bind(&r.http_route)
            .bind(r.http_status)
            .bind(&r.attributes)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
}

impl Telemetry {
    /// Stores log rows in one transaction.
    pub(super) async fn store_logs(&self, rows: &[LogRow]) -> Result<(), tessera::DbError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.db().write_tx().await?;
        for r in rows {
            tessera::store::query(
                "INSERT INTO logs (ts_ns, service, instance, severity, level, body, trace_id, span_id, attributes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(r.ts_ns)
            .bind(&r.service)
            .bind(&r.instance)
            .bind(r.severity)
            .bind(&r.level)
            .bind(&r.body)
            .bind(&r.trace_id)
            .bind(&r.span_id)
            .bind(&r.attributes)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
}

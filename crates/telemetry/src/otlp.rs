//! Spans and log records as OTLP/HTTP protobuf bodies, one request per batch.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tessera_trace::logs::LogData;

use crate::Resource;

/// The instrumentation scope every Tessera span is under.
pub const SCOPE: &str = "tessera";

/// Wraps batches of spans, as the process's sink holds them (`ScopeSpans.spans` entries,
/// written when each span ended: `tessera_trace::span`'s `wire.rs`), into OTLP/HTTP protobuf
/// bodies (`ExportTraceServiceRequest`): the resource and the scope written once, then the
/// spans' bytes copied as they are. A test decodes what comes out with
/// `opentelemetry-proto`'s prost types and compares it with their own encoding of the same
/// spans.
pub struct Encoder {
    /// `ResourceSpans.resource` (field 1), written once.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1), written once.
    scope: Vec<u8>,
}

impl Encoder {
    pub fn new(resource: &Resource) -> Self {
        let mut r = Vec::new();
        message_field(1, &resource_of(resource).encode_to_vec(), &mut r);
        let scope = InstrumentationScope {
            name: SCOPE.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let mut sc = Vec::new();
        message_field(1, &scope.encode_to_vec(), &mut sc);
        Self {
            resource: r,
            scope: sc,
        }
    }

    /// `spans` (`ScopeSpans.spans` entries) as one request's body, written into `out`
    /// (cleared first).
    pub fn encode(&self, spans: &[u8], out: &mut Vec<u8>) {
        self.head(spans.len(), out);
        out.extend_from_slice(spans);
    }

    /// What comes before `len` bytes of spans in a request's body, written into `out` (cleared
    /// first): the exporter sends it and the sink's bytes as they are, one after the other,
    /// rather than copying a batch into a body of its own.
    pub fn head(&self, len: usize, out: &mut Vec<u8>) {
        // ExportTraceServiceRequest { resource_spans = 1: ResourceSpans { resource = 1,
        // scope_spans = 2: ScopeSpans { scope = 1, spans = 2… } } }
        let scope_spans = (self.scope.len() + len) as u64;
        let resource_spans =
            self.resource.len() as u64 + 1 + encoded_len_varint(scope_spans) as u64 + scope_spans;
        out.clear();
        out.reserve(self.resource.len() + self.scope.len() + 32);
        encode_key(1, WireType::LengthDelimited, out);
        encode_varint(resource_spans, out);
        out.extend_from_slice(&self.resource);
        encode_key(2, WireType::LengthDelimited, out);
        encode_varint(scope_spans, out);
        out.extend_from_slice(&self.scope);
    }
}

/// `spans` (`ScopeSpans.spans` entries) cut into parts of at most `max` bytes each (a single
/// span larger than that is a part of its own).
pub fn parts(spans: &[u8], max: usize) -> Vec<&[u8]> {
    if spans.len() <= max {
        // The usual batch: one part, and no span read again to find where to cut.
        return if spans.is_empty() {
            Vec::new()
        } else {
            vec![spans]
        };
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for entry in tessera_trace::span::entries(spans) {
        if entry.end - start > max && end > start {
            out.push(&spans[start..end]);
            start = end;
        }
        end = entry.end;
    }
    if end > start {
        out.push(&spans[start..end]);
    }
    out
}

fn message_field(tag: u32, body: &[u8], buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(body.len() as u64, buf);
    buf.extend_from_slice(body);
}

/// `lines` of the process `resource` as an OTLP/HTTP protobuf body
/// (`ExportLogsServiceRequest`): each line's message its body, its other fields attributes,
/// its trace and span its ids. Log lines are few (those repeating a span are not sent), so
/// `opentelemetry-proto`'s structs do.
pub fn encode_logs(resource: &Resource, lines: &[LogData]) -> Vec<u8> {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource_of(resource)),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: SCOPE.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                log_records: lines.iter().map(record_of).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
    .encode_to_vec()
}

/// The fields a line carries that the record says otherwise (its time, severity, resource,
/// ids, body).
const NOT_ATTRIBUTES: [&str; 7] = [
    "ts", "level", "service", "instance", "trace_id", "span_id", "msg",
];

fn record_of(line: &LogData) -> LogRecord {
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&line.line).unwrap_or_default();
    let body = match fields.get("msg") {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => line.line.clone(),
    };
    let traced = line.trace_id != [0; 16];
    LogRecord {
        time_unix_nano: line.ts_ns,
        observed_time_unix_nano: line.ts_ns,
        severity_number: i32::from(line.severity),
        severity_text: line.level.to_string(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(body)),
        }),
        attributes: fields
            .into_iter()
            .filter(|(k, _)| !NOT_ATTRIBUTES.contains(&k.as_str()))
            .map(|(k, v)| {
                let value = match v {
                    serde_json::Value::String(s) => any_value::Value::StringValue(s),
                    serde_json::Value::Bool(b) => any_value::Value::BoolValue(b),
                    serde_json::Value::Number(n) => match n.as_i64() {
                        Some(i) => any_value::Value::IntValue(i),
                        None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
                    },
                    other => any_value::Value::StringValue(other.to_string()),
                };
                kv(&k, value)
            })
            .collect(),
        trace_id: if traced {
            line.trace_id.to_vec()
        } else {
            Vec::new()
        },
        span_id: if traced {
            line.span_id.to_vec()
        } else {
            Vec::new()
        },
        flags: u32::from(traced),
        ..Default::default()
    }
}

/// The resource attributes a process's spans and logs share.
pub fn resource_of(resource: &Resource) -> ProtoResource {
    ProtoResource {
        attributes: vec![
            kv("service.name", string(&resource.service)),
            kv("service.instance.id", string(&resource.instance)),
            kv("service.version", string(&resource.version)),
            kv("telemetry.sdk.name", string("tessera")),
            kv("telemetry.sdk.language", string("rust")),
        ],
        ..Default::default()
    }
}

fn string(s: &str) -> any_value::Value {
    any_value::Value::StringValue(s.to_string())
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
    use std::sync::Arc;
    use tessera_trace::span::{Kind, Name, SpanData, Value, write_entry};

    /// A span, and its attributes as given (the span holds them written out).
    type Case = (SpanData, Vec<(&'static str, Value<'static>)>);

    /// The spans as the sink holds them.
    fn written(spans: &[Case]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for (s, _) in spans {
            write_entry(s, &mut bytes);
        }
        bytes
    }

    /// The same spans through the crate's structs: what the hand-written encoder must match.
    fn reference(resource: &Resource, spans: &[Case]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource_of(resource)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: SCOPE.into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans: spans.iter().map(span_of).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    fn span_of((s, attributes): &Case) -> Span {
        Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: if s.parent == [0; 8] {
                Vec::new()
            } else {
                s.parent.to_vec()
            },
            flags: if matches!(s.kind, Kind::Server | Kind::Consumer) && s.parent != [0; 8] {
                0x301
            } else {
                0x101
            },
            name: s.name.to_text().into_owned(),
            kind: s.kind as i32,
            start_time_unix_nano: s.start_ns,
            end_time_unix_nano: s.end_ns,
            attributes: attributes.iter().map(|(k, v)| kv(k, value_of(v))).collect(),
            status: Some(match &s.error {
                Some(why) => Status {
                    message: why.to_string(),
                    code: status::StatusCode::Error as i32,
                },
                None => Status::default(),
            }),
            ..Default::default()
        }
    }

    fn value_of(v: &Value) -> any_value::Value {
        match v {
            Value::Str(s) => any_value::Value::StringValue((*s).to_string()),
            Value::Shared(s) => any_value::Value::StringValue(s.to_string()),
            Value::Text(s) => any_value::Value::StringValue(s.clone()),
            Value::Int(n) => any_value::Value::IntValue(*n),
            Value::Bool(b) => any_value::Value::BoolValue(*b),
        }
    }

    fn span(
        n: u8,
        name: Name,
        error: Option<&'static str>,
        attributes: Vec<(&'static str, Value<'static>)>,
    ) -> Case {
        let data = SpanData {
            trace_id: [n; 16],
            span_id: [n + 1; 8],
            parent: if n.is_multiple_of(2) {
                [0; 8]
            } else {
                [n + 2; 8]
            },
            name,
            kind: Kind::Server,
            start_ns: 1_796_000_000_000_000_000 + u64::from(n),
            end_ns: 1_796_000_000_000_000_000 + 1000 * u64::from(n),
            error: error.map(Into::into),
            attributes: attributes.iter().cloned().collect(),
        };
        (data, attributes)
    }

    #[test]
    fn what_is_written_by_hand_decodes_as_the_structs_encode_it() {
        let resource = Resource {
            service: "order".into(),
            instance: "order-1".into(),
            version: "1.2.3".into(),
        };
        let long = "x".repeat(300);
        let spans = vec![
            span(1, Name::Static("db transaction"), None, Vec::new()),
            span(
                2,
                Name::joined("GET", "/api/orders/{id}"),
                Some("answered with a server error"),
                vec![
                    ("http.response.status_code", Value::Int(500)),
                    ("tessera.retry", Value::Int(-3)),
                    ("tessera.duplicate", Value::Bool(true)),
                    ("url.path", Value::Text(long.clone())),
                    ("peer.service", Value::Shared(Arc::from("catalog"))),
                ],
            ),
            span(3, Name::Text(long), None, vec![("k", Value::Str(""))]),
        ];
        let mut body = Vec::new();
        Encoder::new(&resource).encode(&written(&spans), &mut body);
        let decoded = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        assert_eq!(decoded, reference(&resource, &spans));
        // A server span with a parent has a remote parent; a root's is unknown-local.
        let flags: Vec<u32> = decoded.resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.flags)
            .collect();
        assert_eq!(flags, [0x301, 0x101, 0x301]);
        // Encoded again, nothing of the first batch is left over.
        let encoder = Encoder::new(&resource);
        encoder.encode(&written(&spans), &mut body);
        encoder.encode(&written(&spans[..1]), &mut body);
        let decoded = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        assert_eq!(decoded, reference(&resource, &spans[..1]));
    }

    #[test]
    fn a_batch_is_cut_between_spans() {
        let spans: Vec<Case> = (0..10)
            .map(|n| span(n * 2, Name::Static("x"), None, Vec::new()))
            .collect();
        let bytes = written(&spans);
        let one = written(&spans[..1]).len();
        let cut = parts(&bytes, 3 * one);
        assert_eq!(cut.len(), 4, "3 + 3 + 3 + 1");
        assert_eq!(cut.concat(), bytes);
        for part in &cut {
            let decoded = ScopeSpans::decode(*part).unwrap();
            assert!(!decoded.spans.is_empty() && decoded.spans.len() <= 3);
        }
        assert_eq!(
            parts(&bytes, 1).len(),
            10,
            "a span larger than the bound goes alone"
        );
        assert!(parts(&[], 100).is_empty());
    }

    #[test]
    fn a_log_line_becomes_a_record_with_its_trace_and_fields() {
        use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
        let resource = Resource {
            service: "order".into(),
            instance: "order-1".into(),
            version: "1".into(),
        };
        let line = LogData {
            ts_ns: 7,
            severity: 13,
            level: "WARN",
            trace_id: [1; 16],
            span_id: [2; 8],
            line: r#"{"ts":"x","level":"WARN","service":"order","instance":"order-1","trace_id":"01","target":"shop_order","msg":"slow \"lookup\"","ms":12,"ratio":0.5,"ok":false}"#.into(),
        };
        let body = encode_logs(&resource, &[line]);
        let back = ExportLogsServiceRequest::decode(&body[..]).unwrap();
        let record = &back.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!((record.time_unix_nano, record.severity_number), (7, 13));
        assert_eq!(record.severity_text, "WARN");
        assert_eq!(
            record.body.as_ref().unwrap().value,
            Some(any_value::Value::StringValue("slow \"lookup\"".into()))
        );
        assert_eq!(
            (record.trace_id.as_slice(), record.span_id.as_slice()),
            (&[1u8; 16][..], &[2u8; 8][..])
        );
        let keys: Vec<&str> = record.attributes.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["ms", "ok", "ratio", "target"]);
    }
}

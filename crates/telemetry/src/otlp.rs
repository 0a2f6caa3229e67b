//! Spans as OTLP messages (`opentelemetry-proto`'s prost types), one request per batch.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, status};
use prost::Message;
use tessera_trace::span::{SpanData, Value};

use crate::Resource;

/// The instrumentation scope every Tessera span is under.
pub const SCOPE: &str = "tessera";

/// `spans` of the process `resource` as an OTLP/HTTP protobuf body.
pub fn encode_spans(resource: &Resource, spans: &[SpanData]) -> Vec<u8> {
    let request = ExportTraceServiceRequest {
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
    };
    request.encode_to_vec()
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

fn span_of(s: &SpanData) -> Span {
    Span {
        trace_id: s.trace_id.to_vec(),
        span_id: s.span_id.to_vec(),
        parent_span_id: if s.parent == [0; 8] {
            Vec::new()
        } else {
            s.parent.to_vec()
        },
        // W3C flags: sampled (only sampled spans are recorded).
        flags: 0x101,
        name: s.name.to_string(),
        kind: s.kind as i32,
        start_time_unix_nano: s.start_ns,
        end_time_unix_nano: s.end_ns,
        attributes: s
            .attributes
            .iter()
            .map(|(k, v)| kv(k, value_of(v)))
            .collect(),
        status: Some(match &s.error {
            Some(why) => Status {
                message: why.to_string(),
                code: status::StatusCode::Error as i32,
            },
            None => Status {
                message: String::new(),
                code: status::StatusCode::Unset as i32,
            },
        }),
        links: s
            .links
            .iter()
            .map(
                |(trace, span)| opentelemetry_proto::tonic::trace::v1::span::Link {
                    trace_id: trace.to_vec(),
                    span_id: span.to_vec(),
                    ..Default::default()
                },
            )
            .collect(),
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
    use std::borrow::Cow;
    use tessera_trace::span::Kind;

    #[test]
    fn a_span_decodes_back_as_the_otlp_message_it_was() {
        let data = SpanData {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: [3; 8],
            name: Cow::Borrowed("GET /api/orders/{id}"),
            kind: Kind::Server,
            start_ns: 10,
            end_ns: 25,
            error: Some("boom".into()),
            attributes: vec![("http.response.status_code", Value::Int(500))],
            links: Vec::new(),
        };
        let resource = Resource {
            service: "order".into(),
            instance: "order-1".into(),
            version: "1.2.3".into(),
        };
        let body = encode_spans(&resource, &[data]);
        let back = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        let rs = &back.resource_spans[0];
        let attrs = &rs.resource.as_ref().unwrap().attributes;
        assert_eq!(attrs[0].key, "service.name");
        let span = &rs.scope_spans[0].spans[0];
        assert_eq!(span.trace_id, vec![1; 16]);
        assert_eq!(span.parent_span_id, vec![3; 8]);
        assert_eq!(span.kind, Kind::Server as i32);
        assert_eq!(span.end_time_unix_nano - span.start_time_unix_nano, 15);
        assert_eq!(span.status.as_ref().unwrap().code, 2);
        assert_eq!(
            span.attributes[0].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(500))
        );
    }
}

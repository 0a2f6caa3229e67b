//! The last stage: what the client gets back, in the envelope (`envelope.rs`) with its header
//! fields.
//!
//! Three kinds of answer leave the gateway, and each is shaped here: an upstream's answer
//! ([`answer`]), the gateway's own refusal ([`refusal`], the one place a [`GatewayError`]
//! becomes a response) and a route's configured fallback while its service's breaker is open
//! ([`fallback`]). JSON and empty bodies are wrapped, with the status kept (a 204 becomes 200:
//! there is a body now); other success bodies (files, text) pass through as they are, with
//! their own content type. An upstream's error keeps its `{code, message}`, the contract of
//! every Tessera service (whose messages are safe to show, `tessera::ApiError`), or gets a code
//! and the status's reason phrase, never the raw body. The upstream's header fields go back
//! except those that concern one connection, the framing and the trace (the gateway's own
//! values win), and internal `x-tessera-*` signals.

use bytes::Bytes;
use http::StatusCode;
use tessera_manifest::Fallback;

use crate::envelope;
use crate::error::GatewayError;
use crate::fields::Fields;
use crate::forward::is_hop_by_hop;
use crate::server::HeaderBuf;

pub const JSON: &[u8] = b"application/json";

/// Wraps an upstream's answer: its status and body, its fields pushed onto `headers`. A body
/// that says it is JSON and is not is a 502.
pub fn answer(
    status: StatusCode,
    upstream: Fields<'_>,
    body: &Bytes,
    trace_id: &str,
    headers: &mut HeaderBuf,
) -> Result<(StatusCode, Bytes), GatewayError> {
    let content_type = upstream.get("content-type");
    let is_json = content_type
        .and_then(|v| std::str::from_utf8(v).ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
    let wrapped = if status.is_success() || status.is_redirection() || status.is_informational() {
        if body.is_empty() {
            Some(envelope::success(None, trace_id))
        } else if is_json {
            if !envelope::is_json(body) {
                return Err(GatewayError::new(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    "the service sent malformed JSON",
                ));
            }
            Some(envelope::success(Some(body), trace_id))
        } else {
            None // files, text, streams: passed through as they are
        }
    } else {
        let (code, message) = envelope::upstream_error(body).unwrap_or_else(|| {
            (
                envelope::code_for(status.as_u16()).to_string(),
                status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_string(),
            )
        });
        Some(envelope::error(&code, &message, trace_id))
    };
    for (name, value) in upstream.iter() {
        if !not_returned(name) {
            headers.push(name, value);
        }
    }
    Ok(match wrapped {
        Some(body) => {
            headers.push(b"content-type", JSON);
            let status = if status == StatusCode::NO_CONTENT {
                StatusCode::OK
            } else {
                status
            };
            (status, body)
        }
        None => {
            if let Some(ct) = content_type {
                headers.push(b"content-type", ct);
            }
            (status, body.clone())
        }
    })
}

/// An instance's `101 Switching Protocols`: no envelope (what follows is not HTTP), its fields
/// as they are but for those of its own connection (`Connection: upgrade` is the server's)
/// and, as on any answer, those the gateway does not return.
pub fn switching(upstream: Fields<'_>, headers: &mut HeaderBuf) {
    for (name, value) in upstream.iter() {
        if name.eq_ignore_ascii_case(b"upgrade") || !not_returned(name) {
            headers.push(name, value);
        }
    }
}

/// The envelope of a response the gateway makes itself; its fields pushed onto `headers`.
pub fn refusal(e: &GatewayError, trace_id: &str, headers: &mut HeaderBuf) -> Bytes {
    headers.push(b"content-type", JSON);
    if let Some((limit, wait)) = e.retry_after {
        let (mut a, mut b) = (itoa::Buffer::new(), itoa::Buffer::new());
        let (limit, wait) = (a.format(limit).as_bytes(), b.format(wait).as_bytes());
        headers.push(b"retry-after", wait);
        headers.push(b"ratelimit-limit", limit);
        headers.push(b"ratelimit-remaining", b"0");
        headers.push(b"ratelimit-reset", wait);
    }
    envelope::error(e.code, &e.message, trace_id)
}

/// The route's configured answer while its service's breaker is open.
pub fn fallback(f: &Fallback, trace_id: &str, headers: &mut HeaderBuf) -> (StatusCode, Bytes) {
    headers.push(b"content-type", JSON);
    headers.push(b"x-tessera-fallback", b"circuit-open");
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::OK);
    (status, envelope::success(Some(f.body.as_bytes()), trace_id))
}

/// Upstream headers that do not go back to the client: hop-by-hop ones, `Content-Type` (set
/// for the wrapped body), the gateway's own trace fields (its values win) and internal
/// `x-tessera-*` signals.
fn not_returned(name: &[u8]) -> bool {
    is_hop_by_hop(name)
        || name.eq_ignore_ascii_case(b"content-type")
        || name.eq_ignore_ascii_case(b"traceparent")
        || name.eq_ignore_ascii_case(b"x-trace-id")
        || name
            .get(..10)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"x-tessera-"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Head;

    fn json(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).expect("a JSON body")
    }

    fn fields(headers: &HeaderBuf) -> String {
        String::from_utf8(headers.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn a_json_answer_is_spliced_into_the_envelope_with_its_status_and_fields() {
        let head = Head::response(&[
            "Content-Type: application/json; charset=utf-8",
            "Content-Length: 9",
            "Connection: keep-alive",
            "Transfer-Encoding: chunked",
            "Location: /api/orders/7",
            "Traceparent: 00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-01",
            "X-Trace-Id: not-ours",
            "X-Tessera-Revoke-Session: s1",
            "Cache-Control: no-store",
        ]);
        let mut headers = HeaderBuf::default();
        let body = Bytes::from_static(br#"{"id": 7}"#);
        let (status, out) = answer(
            StatusCode::CREATED,
            head.fields(),
            &body,
            "trace1",
            &mut headers,
        )
        .unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            &out[..],
            br#"{"success":true,"data":{"id": 7},"error":null,"traceId":"trace1"}"#
        );
        assert_eq!(
            fields(&headers),
            "Location: /api/orders/7\r\nCache-Control: no-store\r\ncontent-type: application/json\r\n"
        );
    }

    #[test]
    fn an_empty_answer_is_data_null_and_204_becomes_200() {
        let head = Head::response(&[]);
        let mut headers = HeaderBuf::default();
        let (status, out) = answer(
            StatusCode::NO_CONTENT,
            head.fields(),
            &Bytes::new(),
            "t",
            &mut headers,
        )
        .unwrap();
        assert_eq!(status, StatusCode::OK);
        let v = json(&out);
        assert_eq!(
            (v["success"].as_bool(), v["data"].is_null()),
            (Some(true), true)
        );
        assert_eq!(fields(&headers), "content-type: application/json\r\n");
    }

    #[test]
    fn other_bodies_pass_through_with_their_content_type() {
        let head = Head::response(&["Content-Type: text/csv", "ETag: \"v1\""]);
        let mut headers = HeaderBuf::default();
        let body = Bytes::from_static(b"a,b\n1,2\n");
        let (status, out) =
            answer(StatusCode::OK, head.fields(), &body, "t", &mut headers).unwrap();
        assert_eq!((status, out), (StatusCode::OK, body));
        assert_eq!(
            fields(&headers),
            "ETag: \"v1\"\r\ncontent-type: text/csv\r\n"
        );
    }

    #[test]
    fn malformed_json_is_a_502() {
        let head = Head::response(&["Content-Type: application/problem+json"]);
        let mut headers = HeaderBuf::default();
        let body = Bytes::from_static(b"{\"half\":");
        let e = answer(StatusCode::OK, head.fields(), &body, "t", &mut headers).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_GATEWAY, "bad_gateway"));
        assert!(
            headers.as_bytes().is_empty(),
            "nothing of the answer is kept"
        );
    }

    #[test]
    fn an_upstream_error_keeps_its_code_or_gets_one_never_the_raw_body() {
        let head = Head::response(&["Content-Type: application/json"]);
        let mut headers = HeaderBuf::default();
        let body = Bytes::from_static(br#"{"code":"out_of_stock","message":"only 2 left"}"#);
        let (status, out) = answer(
            StatusCode::CONFLICT,
            head.fields(),
            &body,
            "t",
            &mut headers,
        )
        .unwrap();
        assert_eq!(status, StatusCode::CONFLICT);
        let v = json(&out);
        assert_eq!(v["success"], false);
        assert!(v["data"].is_null());
        assert_eq!(v["error"]["code"], "out_of_stock");
        assert_eq!(v["error"]["message"], "only 2 left");

        // Not the contract's shape: a stack trace, an address.
        let head = Head::response(&["Content-Type: text/plain"]);
        let mut headers = HeaderBuf::default();
        let body = Bytes::from_static(b"panic at db.rs:12 connecting to 10.0.0.7:5432");
        let (status, out) = answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            head.fields(),
            &body,
            "t",
            &mut headers,
        )
        .unwrap();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let v = json(&out);
        assert_eq!(v["error"]["code"], "upstream_error");
        assert_eq!(v["error"]["message"], "Internal Server Error");
        assert!(!String::from_utf8_lossy(&out).contains("10.0.0.7"));
        assert_eq!(fields(&headers), "content-type: application/json\r\n");
    }

    #[test]
    fn a_refusal_is_an_error_envelope_and_a_429_says_when_to_come_back() {
        let mut headers = HeaderBuf::default();
        let e = GatewayError::new(StatusCode::FORBIDDEN, "forbidden", "no");
        let out = refusal(&e, "t9", &mut headers);
        assert_eq!(
            &out[..],
            br#"{"success":false,"data":null,"error":{"code":"forbidden","message":"no"},"traceId":"t9"}"#
        );
        assert_eq!(fields(&headers), "content-type: application/json\r\n");

        let mut headers = HeaderBuf::default();
        let e = GatewayError {
            retry_after: Some((100, 3)),
            ..GatewayError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow")
        };
        refusal(&e, "t", &mut headers);
        assert_eq!(
            fields(&headers),
            "content-type: application/json\r\nretry-after: 3\r\nratelimit-limit: 100\r\n\
             ratelimit-remaining: 0\r\nratelimit-reset: 3\r\n"
        );
    }

    #[test]
    fn a_fallback_is_the_configured_document_marked_as_such() {
        let mut headers = HeaderBuf::default();
        let f = Fallback {
            status: 203,
            body: r#"{"items":[]}"#.into(),
        };
        let (status, out) = fallback(&f, "t", &mut headers);
        assert_eq!(status, StatusCode::NON_AUTHORITATIVE_INFORMATION);
        assert_eq!(json(&out)["data"]["items"], serde_json::json!([]));
        assert_eq!(
            fields(&headers),
            "content-type: application/json\r\nx-tessera-fallback: circuit-open\r\n"
        );
    }
}

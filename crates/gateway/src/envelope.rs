//! The envelope every client response is wrapped in:
//! `{"success": bool, "data": ..., "error": {"code", "message"} | null, "traceId": "..."}`.
//!
//! Success bodies are spliced in as they are (after a check that they are JSON), not parsed
//! into a tree and printed again: the gateway copies bytes, it does not rebuild documents.

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;

/// `data` is an upstream JSON document (or `None` for `null`).
pub fn success(data: Option<&[u8]>, trace_id: &str) -> Bytes {
    let data = data.unwrap_or(b"null");
    let mut out = BytesMut::with_capacity(data.len() + 80);
    out.put_slice(b"{\"success\":true,\"data\":");
    out.put_slice(data);
    out.put_slice(b",\"error\":null,\"traceId\":\"");
    out.put_slice(trace_id.as_bytes());
    out.put_slice(b"\"}");
    out.freeze()
}

pub fn error(code: &str, message: &str, trace_id: &str) -> Bytes {
    #[derive(serde::Serialize)]
    struct Envelope<'a> {
        success: bool,
        data: (),
        error: ErrorBody<'a>,
        #[serde(rename = "traceId")]
        trace_id: &'a str,
    }
    #[derive(serde::Serialize)]
    struct ErrorBody<'a> {
        code: &'a str,
        message: &'a str,
    }
    let body = Envelope {
        success: false,
        data: (),
        error: ErrorBody { code, message },
        trace_id,
    };
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[derive(Deserialize)]
struct UpstreamError {
    code: String,
    message: String,
}

/// The `{code, message}` an upstream sent with an error status, if it sent one.
pub fn upstream_error(body: &[u8]) -> Option<(String, String)> {
    serde_json::from_slice::<UpstreamError>(body)
        .ok()
        .map(|e| (e.code, e.message))
}

/// Whether `body` is one well-formed JSON document.
pub fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// A stable error code for a status the upstream gave no code for.
pub fn code_for(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        417 => "expectation_failed",
        422 => "unprocessable",
        429 => "too_many_requests",
        431 => "headers_too_large",
        502 => "bad_gateway",
        503 => "unavailable",
        504 => "upstream_timeout",
        s if s >= 500 => "upstream_error",
        _ => "request_failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_is_valid_json() {
        let body = success(Some(br#"{"a":[1,2]}"#), "abc");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["success"], true);
        assert_eq!(v["data"]["a"][1], 2);
        assert!(v["error"].is_null());
        assert_eq!(v["traceId"], "abc");
        let v: serde_json::Value = serde_json::from_slice(&success(None, "t")).unwrap();
        assert!(v["data"].is_null());
    }

    #[test]
    fn errors_escape() {
        let raw = error("x", "a \"quote\"", "t");
        assert!(raw.starts_with(b"{\"success\":false,\"data\":null,\"error\":{"));
        let v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(v["error"]["message"], "a \"quote\"");
        assert_eq!(v["success"], false);
        assert_eq!(
            upstream_error(br#"{"code":"c","message":"m"}"#),
            Some(("c".into(), "m".into()))
        );
        assert_eq!(upstream_error(b"oops"), None);
        assert!(is_json(b" [1] ") && !is_json(b"{") && !is_json(b"1 2"));
    }
}

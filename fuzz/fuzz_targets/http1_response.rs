//! The client's response reading (`tessera_http1::pool::read_response`, what the pool does for
//! every response: 1xx skipped, the head, then a body by `Content-Length`, chunked, or to the
//! connection's close), from the input in pieces.
//!
//! Asserts: no panic; the body is never longer than the limit or than the input, and a `HEAD`
//! answer, a 204 and a 304 have none; the response (status, fields, body) or the error is the
//! same whether the bytes come at once or in pieces.
#![no_main]

use http::{Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{Feed, Plan, block_on, limit};
use tessera_http1::pool::{SendError, read_response};

/// What the caller gets: the status, the fields and the body, or the error.
type Answer = Result<(StatusCode, Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>), SendError>;

fuzz_target!(|data: &[u8]| {
    let plan = Plan::new(data);
    let method =
        [Method::GET, Method::HEAD, Method::POST][usize::from(plan.flags >> 3) % 3].clone();
    let max = limit(plan.flags);
    let whole = read(plan.payload, &[usize::MAX], &method, max);
    let pieces = read(plan.payload, plan.pieces(), &method, max);
    if let Ok((status, _, body)) = &whole {
        assert!(
            body.len() as u64 <= max,
            "a body of {} past the limit of {max}",
            body.len()
        );
        assert!(body.len() <= plan.payload.len());
        if method == Method::HEAD || matches!(status.as_u16(), 204 | 304) {
            assert!(body.is_empty());
        }
        assert!(!status.is_informational());
    }
    assert_eq!(whole, pieces, "in pieces {:?}", plan.pieces());
});

fn read(input: &[u8], sizes: &[usize], method: &Method, max: u64) -> Answer {
    let (resp, _reusable) = block_on(read_response(Feed::new(input, sizes), method, max))?;
    let fields = resp
        .fields()
        .iter()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    Ok((resp.status, fields, resp.body.to_vec()))
}

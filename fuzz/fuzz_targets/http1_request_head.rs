//! The gateway's request heads and their framing: `parse_head` alone, then whole connections
//! (heads, bodies of either framing, pipelining) served from the input in pieces.
//!
//! Asserts: no panic; a parsed head lies within what was read, its target is a path, and
//! what follows it, or a read that stops short of its end, changes nothing; a head the server
//! accepts keeps its framing rules (chunked only on HTTP/1.1 and never with a length, one
//! Host); a connection serves the same requests, bodies and refusals however the bytes
//! arrive; no body handed on is longer than what was sent.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use tessera_fuzz::{Feed, Plan, block_on, limit};
use tessera_http1::fields::Fields;
use tessera_http1::server::{
    BodyError, BodyFraming, Handler, HeaderBuf, Limits, Request, RequestHead, parse_head,
    serve_connection,
};

fuzz_target!(|data: &[u8]| {
    let plan = Plan::new(data);
    check_head(plan.payload, plan.pieces());
    let limits = Limits {
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        min_body_rate: 1024,
        max_body: limit(plan.flags),
        max_connections: 1,
    };
    let whole = serve(plan.payload, &[usize::MAX], &limits);
    let pieces = serve(plan.payload, plan.pieces(), &limits);
    assert_eq!(whole, pieces, "the same bytes read in other pieces");
});

fn check_head(buf: &[u8], cuts: &[usize]) {
    let mut fields = Vec::new();
    let head = match parse_head(buf, &mut fields) {
        Ok(Some(head)) => head,
        Ok(None) => {
            // Incomplete: so is any shorter read of it.
            for &cut in cuts {
                let mut f = Vec::new();
                assert_eq!(parse_head(&buf[..cut.min(buf.len())], &mut f), Ok(None));
            }
            return;
        }
        Err(reject) => {
            let status = reject.0.as_u16();
            assert!(matches!(status, 400 | 417 | 431), "{status}");
            return;
        }
    };
    let RequestHead {
        len,
        target: (start, target_len),
        path_len,
        ..
    } = head;
    assert!(len <= buf.len());
    assert!(start + target_len <= len);
    let target = std::str::from_utf8(&buf[start..start + target_len]).expect("a target is text");
    assert!(target.starts_with('/'), "{target:?}");
    assert!(!target.contains('#'), "{target:?}");
    assert!(path_len <= target_len);
    assert!(!target[..path_len].contains('?'));
    if head.keep_alive_10 {
        assert!(head.keep_alive);
    }
    for (name, value) in Fields::new(&buf[..len], &fields).iter() {
        assert!(!name.is_empty());
        assert!(!value.contains(&b'\n'));
    }

    // The head reads the same without what follows it, and a read that stops short of its
    // end is only incomplete (a head split across reads is the same head).
    let mut f = Vec::new();
    assert_eq!(parse_head(&buf[..len], &mut f), Ok(Some(head.clone())));
    for cut in cuts.iter().map(|c| c % len).chain([len - 1]) {
        assert_eq!(parse_head(&buf[..cut], &mut f), Ok(None), "cut at {cut}");
    }

    // The framing rules (RFC 9112 §3.2, §6.1, §6.3), read from the head by httparse itself.
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    let parsed = req.parse(&buf[..len]).expect("httparse reads it again");
    assert!(parsed.is_complete());
    let count = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    let http11 = req.version == Some(1);
    assert!(count("host") == 1 || (!http11 && count("host") == 0));
    if !http11 {
        assert_eq!(count("transfer-encoding"), 0);
    }
    if head.framing == BodyFraming::Chunked {
        assert!(http11);
        assert_eq!(count("content-length"), 0);
    } else {
        assert_eq!(count("transfer-encoding"), 0);
    }
}

/// What a handler saw of one request, or a request the server refused itself.
#[derive(Debug, PartialEq)]
enum Seen {
    Request {
        method: String,
        target: String,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        body: Result<Vec<u8>, BodyError>,
    },
    Refused(u16, String),
}

struct Recorder {
    sent: usize,
    seen: Mutex<Vec<Seen>>,
}

impl Handler for Recorder {
    type Done<'a> = ();

    async fn handle<'a>(
        &'a self,
        req: &'a Request<'a>,
        headers: &mut HeaderBuf,
    ) -> (StatusCode, Bytes, ()) {
        assert!(req.target.starts_with('/'));
        assert!(req.target.starts_with(req.path));
        assert!(!req.path.contains('?'));
        if let Ok(body) = req.body {
            assert!(body.len() <= self.sent, "a body longer than the input");
        }
        self.seen.lock().unwrap().push(Seen::Request {
            method: req.method.to_string(),
            target: req.target.to_string(),
            fields: req
                .fields
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect(),
            body: req.body.map(<[u8]>::to_vec),
        });
        headers.push(b"x-seen", b"1");
        let status = match req.body {
            Ok(_) => StatusCode::OK,
            Err(_) => StatusCode::BAD_REQUEST,
        };
        (status, Bytes::from_static(b"ok"), ())
    }

    fn done(&self, _: &Request<'_>, _: StatusCode, (): ()) {}

    fn malformed(&self, status: StatusCode, message: &str, _: IpAddr, _: &mut HeaderBuf) -> Bytes {
        let seen = Seen::Refused(status.as_u16(), message.to_string());
        self.seen.lock().unwrap().push(seen);
        Bytes::new()
    }
}

/// Serves one connection that sends `input` in pieces of `sizes`, then closes.
fn serve(input: &[u8], sizes: &[usize], limits: &Limits) -> Vec<Seen> {
    let recorder = Recorder {
        sent: input.len(),
        seen: Mutex::default(),
    };
    let peer = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut feed = Feed::new(input, sizes);
    block_on(serve_connection(&mut feed, peer, &recorder, limits));
    let seen = recorder.seen.into_inner().unwrap();
    // Every request is answered once, in order (interim `100 Continue`s aside).
    let count = |what: &[u8]| {
        feed.written
            .windows(what.len())
            .filter(|w| *w == what)
            .count()
    };
    let answers = count(b"HTTP/1.1 ") - count(b"HTTP/1.1 100 Continue\r\n");
    assert_eq!(answers, seen.len());
    seen
}

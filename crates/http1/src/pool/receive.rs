//! Reading a response: its head (after any 1xx, or a `101` when switching protocols was
//! asked for), its framing, and its whole body, bounded; what the pool does once a request is
//! written, and what the fuzz targets drive with any bytes.

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Connection, Failure, Incoming, SendError};
use crate::chunked::{self, ChunkError};
use crate::fields::{self, Field};
use crate::head;

/// The most response headers read; more is a malformed response.
const MAX_HEADERS: usize = 100;
/// The longest response head read.
const MAX_HEAD: usize = 64 * 1024;

/// Reads the response to a `method` request from `stream`, as the pool reads every response
/// once its request is written (public for the fuzz targets); also says whether the
/// connection could serve another request.
pub async fn read_response<S: AsyncRead + Unpin>(
    stream: S,
    method: &Method,
    max_response: u64,
) -> Result<(Incoming, bool), SendError> {
    let mut conn = Connection {
        stream,
        read: BytesMut::with_capacity(8 * 1024),
        write: Vec::new(),
        identity: None,
    };
    Ok(receive(&mut conn, method, max_response, false).await?)
}

/// The response to a `method` request that was just written on `conn`: its head (after any
/// 1xx) and its whole body, and whether `conn` can serve another request. With `upgrading`,
/// a `101` is the response (without a body: what follows is the new protocol's).
pub(super) async fn receive<S: AsyncRead + Unpin>(
    conn: &mut Connection<S>,
    method: &Method,
    max_response: u64,
    upgrading: bool,
) -> Result<(Incoming, bool), Failure> {
    let mut answered = false;
    let (status, head, fields, framing, mut reusable) = loop {
        let head = read_head(conn, answered).await?;
        answered = true;
        // 1xx answers (100 Continue, 103 Early Hints) come before the response proper.
        if head.0.is_informational() {
            if head.0 == StatusCode::SWITCHING_PROTOCOLS {
                if !upgrading {
                    return Err(Failure::Broken); // never asked for
                }
                let (status, head, fields, _, _) = head;
                let body = Bytes::new();
                let upgraded = None;
                return Ok((
                    Incoming {
                        status,
                        head,
                        fields,
                        body,
                        upgraded,
                    },
                    false,
                ));
            }
            continue;
        }
        break head;
    };
    let framing = if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else {
        framing
    };
    let body = match framing {
        Framing::Length(n) => {
            if n > max_response {
                return Err(Failure::TooLarge);
            }
            read_exact(conn, n as usize).await?
        }
        Framing::Chunked => read_chunked(conn, max_response).await?,
        Framing::Close => {
            reusable = false;
            read_to_end(conn, max_response).await?
        }
    };
    // Bytes beyond the response are a protocol error of the instance's: do not reuse.
    let reusable = reusable && conn.read.is_empty();
    Ok((
        Incoming {
            status,
            head,
            fields,
            body,
            upgraded: None,
        },
        reusable,
    ))
}

/// How the response body ends.
enum Framing {
    Length(u64),
    Chunked,
    Close,
}

/// Reads more into the connection's buffer; `Ok(false)` at the end of the stream.
async fn fill<S: AsyncRead + Unpin>(conn: &mut Connection<S>) -> Result<bool, Failure> {
    if conn.read.capacity() - conn.read.len() < 4096 {
        conn.read.reserve(8 * 1024);
    }
    match conn.stream.read_buf(&mut conn.read).await {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(_) => Err(Failure::Broken),
    }
}

/// A response head: its status, bytes, fields, body framing, and whether the connection stays
/// open after the body.
type Head = (StatusCode, Bytes, Vec<Field>, Framing, bool);

/// Reads and parses a response head. `answered`: some of the response came already.
async fn read_head<S: AsyncRead + Unpin>(
    conn: &mut Connection<S>,
    answered: bool,
) -> Result<Head, Failure> {
    let mut first = !answered;
    loop {
        if !conn.read.is_empty() {
            let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
            let mut parsed = httparse::Response::new(&mut []);
            match httparse::ParserConfig::default().parse_response_with_uninit_headers(
                &mut parsed,
                &conn.read,
                &mut slots,
            ) {
                Ok(httparse::Status::Complete(len)) => {
                    let (status, framing, keep_alive) = parse_head(&parsed)?;
                    let mut fields = Vec::with_capacity(parsed.headers.len());
                    fields::record(&conn.read, parsed.headers, &mut fields);
                    let head = conn.read.split_to(len).freeze();
                    return Ok((status, head, fields, framing, keep_alive));
                }
                Ok(httparse::Status::Partial) if conn.read.len() < MAX_HEAD => {}
                _ => return Err(Failure::Broken),
            }
        }
        if !fill(conn)
            .await
            .map_err(|f| if first { Failure::Closed } else { f })?
        {
            return Err(if first && conn.read.is_empty() {
                Failure::Closed
            } else {
                Failure::Broken
            });
        }
        first = false;
    }
}

/// A response head's status, body framing, and whether the connection stays open after it.
fn parse_head(parsed: &httparse::Response<'_, '_>) -> Result<(StatusCode, Framing, bool), Failure> {
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Failure::Broken)?;
    let http11 = parsed.version == Some(1);
    let framing = head::framing(parsed.headers).map_err(|_| Failure::Broken)?;
    // A coding other than chunked last: the body ends with the connection.
    let close = framing.close
        || (!http11 && !framing.keep_alive)
        || (framing.transfer_encoding && !framing.chunked);
    let (chunked, length) = (framing.chunked, framing.length);
    let framing = if chunked {
        Framing::Chunked // wins over Content-Length (RFC 9112 §6.3)
    } else if let Some(n) = length {
        Framing::Length(n)
    } else if status.is_informational() {
        Framing::Length(0)
    } else {
        Framing::Close
    };
    Ok((status, framing, !close))
}

/// The next `n` bytes of the stream.
async fn read_exact<S: AsyncRead + Unpin>(
    conn: &mut Connection<S>,
    n: usize,
) -> Result<Bytes, Failure> {
    if conn.read.len() < n {
        conn.read
            .reserve((n - conn.read.len()).min(crate::RESERVE_AHEAD));
        while conn.read.len() < n {
            if !fill(conn).await? {
                return Err(Failure::Broken);
            }
        }
    }
    Ok(conn.read.split_to(n).freeze())
}

/// The rest of the stream, at most `max` bytes of it, what came with the head included.
async fn read_to_end<S: AsyncRead + Unpin>(
    conn: &mut Connection<S>,
    max: u64,
) -> Result<Bytes, Failure> {
    loop {
        if conn.read.len() as u64 > max {
            return Err(Failure::TooLarge);
        }
        if !fill(conn).await? {
            return Ok(conn.read.split().freeze());
        }
    }
}

/// A chunked body, decoded as it arrives (the decoded part of the buffer dropped as it goes);
/// trailers are read and dropped.
async fn read_chunked<S: AsyncRead + Unpin>(
    conn: &mut Connection<S>,
    max: u64,
) -> Result<Bytes, Failure> {
    let mut body = Vec::new();
    let mut decoder = chunked::Decoder::new(0);
    loop {
        match decoder.decode(&conn.read, &mut body, max) {
            Ok(true) => {
                conn.read.advance(decoder.position());
                return Ok(Bytes::from(body));
            }
            Ok(false) => {
                let done = decoder.position();
                conn.read.advance(done);
                decoder.consumed(done);
                if !fill(conn).await? {
                    return Err(Failure::Broken);
                }
            }
            Err(ChunkError::TooLarge) => return Err(Failure::TooLarge),
            Err(ChunkError::Malformed) => return Err(Failure::Broken),
        }
    }
}

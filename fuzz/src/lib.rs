//! What the fuzz targets share: reading a plan out of the input (where a socket would split
//! it, which limit applies), a byte stream that delivers it in those pieces, and a runtime to
//! drive the async readers on.
//!
//! The targets call the crates' own parsers; nothing here parses what they parse.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Fuzz input read as a plan and a payload: the first byte chooses options (`flags`), the
/// second how many of the following bytes (0 to 7) are read sizes (each 1 to 256 bytes, used
/// in turn, round and round); the rest is the payload.
pub struct Plan<'a> {
    pub flags: u8,
    pub sizes: Vec<usize>,
    pub payload: &'a [u8],
}

impl<'a> Plan<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        let (flags, rest) = data.split_first().map_or((0, data), |(f, r)| (*f, r));
        let (n, rest) = rest
            .split_first()
            .map_or((0, rest), |(n, r)| (usize::from(*n % 8), r));
        let n = n.min(rest.len());
        let sizes = rest[..n].iter().map(|b| usize::from(*b) + 1).collect();
        Self {
            flags,
            sizes,
            payload: &rest[n..],
        }
    }

    /// The read sizes, or one read of everything when the input names none.
    pub fn pieces(&self) -> &[usize] {
        if self.sizes.is_empty() {
            &[usize::MAX]
        } else {
            &self.sizes
        }
    }
}

/// A byte limit chosen by `b`: none, tiny, small, or the platform's usual ones.
pub fn limit(b: u8) -> u64 {
    [0, 1, 7, 64, 1024, 1 << 20, u64::MAX, 16][usize::from(b % 8)]
}

/// A stream that reads `input` in pieces of the given sizes (then the end of the stream) and
/// keeps what is written to it.
pub struct Feed<'a> {
    input: &'a [u8],
    sizes: &'a [usize],
    next: usize,
    pub written: Vec<u8>,
}

impl<'a> Feed<'a> {
    pub fn new(input: &'a [u8], sizes: &'a [usize]) -> Self {
        assert!(!sizes.is_empty());
        Self {
            input,
            sizes,
            next: 0,
            written: Vec::new(),
        }
    }
}

impl AsyncRead for Feed<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let size = this.sizes[this.next % this.sizes.len()];
        this.next += 1;
        let n = size.min(this.input.len()).min(buf.remaining());
        buf.put_slice(&this.input[..n]);
        this.input = &this.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Feed<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    /// One runtime for every input: a current-thread one whose clock is paused, so that the
    /// server's timeouts are deterministic (a `Feed` never makes it wait).
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
}

/// Runs `future` to its end.
pub fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(future))
}

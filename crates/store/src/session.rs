//! Read-your-writes across a primary and its read replicas: what the request being served
//! must see, and what it wrote.
//!
//! A replica replays the primary's log a little behind it. A read sent there right after the
//! caller's own write could miss that write, so each request carries the position in the log
//! (the LSN) its caller has seen written: the service library reads it from the
//! `tessera-read-after` header into [`scope`], every commit on the primary raises it (and
//! records it, for the answer's own `tessera-read-after`), and a read goes to a replica only
//! once that replica has replayed past it. A request with nothing to wait for reads from a
//! replica at once.

use std::cell::Cell;

tokio::task_local! {
    static SESSION: Session;
}

/// The header a caller sends back, as it was given, to read its own writes.
pub const HEADER: &str = "tessera-read-after";

#[derive(Default)]
struct Session {
    /// The log position reads must have seen (0: none).
    read_after: Cell<u64>,
    /// The highest log position this request's own commits reached (0: none).
    wrote: Cell<u64>,
}

/// Runs `f` as one request of a caller that has seen the log up to `read_after` (an LSN
/// from [`HEADER`], parsed by [`parse`]); returns its output and the log position of its
/// last commit, if it wrote.
pub async fn scope<F: Future>(read_after: Option<u64>, f: F) -> (F::Output, Option<u64>) {
    let session = Session {
        read_after: Cell::new(read_after.unwrap_or(0)),
        wrote: Cell::new(0),
    };
    SESSION
        .scope(session, async move {
            let out = f.await;
            let wrote = SESSION.with(|s| s.wrote.get());
            (out, (wrote > 0).then_some(wrote))
        })
        .await
}

/// Whether this task serves a request (runs in a [`scope`]): only then is a write's position
/// worth reading (work outside a request, such as a consumer's or a relay's, has no caller
/// to hand it to).
pub(crate) fn active() -> bool {
    SESSION.try_with(|_| ()).is_ok()
}

/// What reads in this request must have seen (0: anything will do).
pub(crate) fn read_after() -> u64 {
    SESSION.try_with(|s| s.read_after.get()).unwrap_or(0)
}

/// Records a commit that reached `lsn`: later reads of this request wait for it too.
pub(crate) fn wrote(lsn: u64) {
    let _ = SESSION.try_with(|s| {
        s.wrote.set(s.wrote.get().max(lsn));
        s.read_after.set(s.read_after.get().max(lsn));
    });
}

/// Records a write that another task made on this request's behalf (a task that batches the
/// writes of several requests into one commit runs it in a [`scope`] of its own, and hands
/// each request what it wrote): the request's later reads, and its answer, count it.
pub fn record(lsn: u64) {
    wrote(lsn);
}

/// An LSN as PostgreSQL writes it (`16/B374D848`).
pub fn format(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// An LSN written as PostgreSQL does; `None` for anything else.
pub fn parse(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let (hi, lo) = (
        u32::from_str_radix(hi, 16).ok()?,
        u32::from_str_radix(lo, 16).ok()?,
    );
    Some((u64::from(hi) << 32) | u64::from(lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_read_back_as_written() {
        for lsn in [0, 1, 0x16_B374_D848, u64::MAX] {
            assert_eq!(parse(&format(lsn)), Some(lsn));
        }
        assert_eq!(format(0x16_B374_D848), "16/B374D848");
        for bad in ["", "16", "16/", "x/1", "1/2/3", "100000000/0"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_commit_raises_what_later_reads_wait_for() {
        let ((), wrote) = scope(Some(5), async {
            assert_eq!(read_after(), 5);
            wrote(9);
            wrote(7);
            assert_eq!(read_after(), 9);
        })
        .await;
        assert_eq!(wrote, Some(9));
        let ((), wrote) = scope(None, async { assert_eq!(read_after(), 0) }).await;
        assert_eq!(wrote, None);
        // Outside a request: nothing to wait for, nothing recorded.
        assert_eq!(read_after(), 0);
        super::wrote(3);
    }
}

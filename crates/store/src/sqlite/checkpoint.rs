//! WAL checkpoints off the commit path: on a blocking thread, once a second after a write,
//! and, when the WAL has grown long, finished while this process's writers are held off, so
//! that the WAL stays bounded under a steady stream of commits.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Pool, UNHELD_PASSES, open_connection};

/// Checkpoints the WAL on a blocking thread when something was written, until the pool is
/// gone; when the WAL has grown long, once more while holding this process's writers off.
pub(super) async fn checkpoints(pool: Weak<Pool>, every: Duration, frames_held: i64) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<rusqlite::Connection> = None;
    loop {
        tick.tick().await;
        let Some(p) = pool.upgrade() else { return };
        if p.written.swap(0, Ordering::Relaxed) == 0 {
            continue;
        }
        let (path, writer, sync) = (p.path.clone(), p.writer.clone(), p.sync);
        drop(p);
        let mut held = None;
        let mut unheld = 0;
        loop {
            let (c, path) = (conn.take(), path.clone());
            let held_now = held.take();
            let last = held_now.is_some();
            let done = tokio::task::spawn_blocking(move || {
                let held = held_now.is_some();
                let _writers = held_now;
                let started = Instant::now();
                let c = match c {
                    Some(c) => c,
                    None => {
                        let c = open_connection(&path, sync).ok()?;
                        c.busy_timeout(Duration::from_secs(1)).ok()?;
                        c
                    }
                };
                // PASSIVE: never waits for readers (or another process's writer). Its answer
                // is (busy, frames in the WAL, frames copied).
                let frames = c
                    .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
                    .inspect_err(|e| tracing::warn!(error = %e, "WAL checkpoint failed"))
                    .unwrap_or(0);
                tracing::debug!(
                    held,
                    frames,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "WAL checkpoint"
                );
                Some((c, frames))
            })
            .await
            .ok()
            .flatten();
            let Some((c, frames)) = done else { break };
            conn = Some(c);
            if frames <= frames_held || last {
                break;
            }
            // The WAL is long: finish it, so that the next commit starts it over. Passes
            // right after one another copy less each time (only what was committed during
            // the one before) and leave less to sync; the last holds the writers off, so
            // that nothing is committed while it runs, and is short.
            unheld += 1;
            if unheld >= UNHELD_PASSES {
                held = Some(writer.clone().lock_owned().await);
            }
        }
    }
}

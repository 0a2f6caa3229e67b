//! Revoked sessions, fanned out to every gateway at once: a sorted set of session ids by the
//! time their last token expires (so that a gateway that (re)connects reads what still
//! matters), and a pub/sub channel that tells every subscribed gateway the moment one is
//! added. The token service revokes; gateways refuse.

use std::time::Duration;

use futures_util::StreamExt;

use crate::{PATIENCE, Shared};

/// How long a revocation is retried for before it is left to the token service's feed.
const PERSISTENCE: Duration = Duration::from_secs(10);
/// How long the subscription may be quiet before it is PINGed.
const QUIET: Duration = Duration::from_secs(10);

/// A revoked session: its tokens are refused until `until` (Unix seconds), when they expire
/// anyway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub sid: String,
    pub until: u64,
}

impl Shared {
    /// Records a revocation and tells every gateway, retrying for a while (a revocation is
    /// rare and matters: it is not subject to the hot path's 100 ms bound or back-off);
    /// `false` when Redis could not be told (the token service's own feed still carries it).
    pub async fn revoke(&self, revocation: &Revocation) -> bool {
        let (set, channel) = (self.key("revoked"), self.key("revocations"));
        let deadline = std::time::Instant::now() + PERSISTENCE;
        let backoff = tessera_resilience::Backoff {
            base_ms: 50,
            max_ms: 1000,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let pause = backoff.delay(attempt);
            let mut conn = self.conns().patient.clone();
            let told = tokio::time::timeout(
                PATIENCE,
                redis::pipe()
                    .atomic()
                    .zadd(&set, &revocation.sid, revocation.until)
                    .ignore()
                    .zrembyscore(&set, 0, tessera_now())
                    .ignore()
                    .publish(&channel, format!("{} {}", revocation.until, revocation.sid))
                    .ignore()
                    .query_async::<()>(&mut conn),
            )
            .await;
            let last_try = std::time::Instant::now() + pause >= deadline;
            match told {
                Ok(Ok(())) => return true,
                Ok(Err(e)) => {
                    self.renew(&e);
                    if last_try {
                        tracing::warn!(error = %e, "redis did not take a revocation");
                        return false;
                    }
                }
                Err(_) if last_try => return false,
                Err(_) => {}
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Calls `on_revoked` for every session revoked now and from now on, for as long as this
    /// process lives: on every (re)connection it reads the whole set again, so an outage loses
    /// nothing.
    pub fn follow_revocations(
        self: &std::sync::Arc<Self>,
        on_revoked: impl Fn(Revocation) + Send + Sync + 'static,
    ) {
        let shared = self.clone();
        tokio::spawn(async move {
            let (set, channel) = (shared.key("revoked"), shared.key("revocations"));
            let mut failing = false;
            loop {
                let followed: redis::RedisResult<()> = async {
                    let bounded = |what: &'static str| {
                        move |_| {
                            redis::RedisError::from(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                what,
                            ))
                        }
                    };
                    // (A client of its own each time: its TLS identity read again.)
                    let client = shared.settings.client()?;
                    let mut pubsub = tokio::time::timeout(PATIENCE, client.get_async_pubsub())
                        .await
                        .map_err(bounded("connecting timed out"))??;
                    tokio::time::timeout(PATIENCE, pubsub.subscribe(&channel))
                        .await
                        .map_err(bounded("subscribing timed out"))??;
                    // Subscribed first, read second: nothing falls between the two.
                    let mut conn = shared.conns().patient.clone();
                    let all: Vec<(String, u64)> = tokio::time::timeout(
                        PATIENCE,
                        redis::cmd("ZRANGEBYSCORE")
                            .arg(&set)
                            .arg(tessera_now())
                            .arg("+inf")
                            .arg("WITHSCORES")
                            .query_async(&mut conn),
                    )
                    .await
                    .map_err(bounded("reading the set timed out"))?
                    .inspect_err(|e| shared.renew(e))?;
                    if failing {
                        tracing::info!("redis revocations followed again");
                        failing = false;
                    }
                    for (sid, until) in all {
                        on_revoked(Revocation { sid, until });
                    }
                    // A connection that died without a word (a host gone) ends no stream: ask
                    // it for a PING when it has been quiet a while, and start over if it does
                    // not answer.
                    let (mut sink, mut messages) = pubsub.split();
                    loop {
                        let message = match tokio::time::timeout(QUIET, messages.next()).await {
                            Ok(Some(message)) => message,
                            Ok(None) => break,
                            Err(_) => {
                                tokio::time::timeout(PATIENCE, sink.ping::<redis::Value>())
                                    .await
                                    .map_err(bounded("a PING went unanswered"))??;
                                continue;
                            }
                        };
                        let Ok(payload) = message.get_payload::<String>() else {
                            continue;
                        };
                        if let Some((until, sid)) = payload.split_once(' ')
                            && let Ok(until) = until.parse()
                        {
                            on_revoked(Revocation {
                                sid: sid.to_string(),
                                until,
                            });
                        }
                    }
                    Err(redis::RedisError::from(std::io::Error::other(
                        "the subscription ended",
                    )))
                }
                .await;
                if let Err(e) = followed
                    && !failing
                {
                    tracing::warn!(error = %e, "cannot follow revocations on redis; retrying");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }
}

fn tessera_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

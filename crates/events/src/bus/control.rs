//! The control plane's implementation of the [`Bus`](super::Bus): the log's HTTP API
//! (`wire.rs`) spoken through the lean HTTP/1.1 client, or reqwest for other URLs.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use tessera_http1::pool::SendError;
use tessera_identity::Credential;

use super::{Batch, BoxFuture, Bus, BusError, Fetched, Part};
use crate::wire::{
    CommitRequest, Delivered, FetchAnswer, FetchRequest, Position, PublishRequest, RenewAnswer,
    RenewRequest,
};
use crate::{Delivery, Event};

/// The control plane's embedded log, over HTTP.
///
/// Every publish and fetch of every service is an exchange with the log, so a plain `http://`
/// control URL (the control plane serves plain HTTP) is spoken to through the platform's lean
/// HTTP/1.1 client ([`tessera_http1::pool`]); any other URL (`https://`, behind a proxy) through
/// reqwest. An exchange whose kept-alive connection turns out closed before any answer is sent
/// again on a fresh one: at worst that appends an event twice or repeats a fetch, which the
/// consumers' inboxes and the offsets make harmless.
#[derive(Clone)]
pub struct ControlBus {
    transport: Transport,
    /// `Bearer <credential>`: who this process is, on every exchange.
    authorization: Arc<str>,
}

#[derive(Clone)]
enum Transport {
    Lean {
        /// `host:port`.
        address: Arc<str>,
        /// The URL's path, if the control plane is served under one.
        prefix: Arc<str>,
        pool: Arc<tessera_http1::pool::Pool>,
        /// The control plane's identity, when mutual TLS is on (`https://` URLs).
        identity: Option<tessera_tls::Identity>,
    },
    Reqwest {
        base: String,
        http: reqwest::Client,
    },
}

/// The largest answer read from the log (a fetch of many large events).
/// (The log keeps a fetch answer's events under `MAX_FETCH_BYTES`; this leaves room for one
/// event of the largest size the log takes beyond it, and for the JSON around them.)
const MAX_ANSWER: u64 = 2 * crate::wire::MAX_FETCH_BYTES as u64;

impl ControlBus {
    /// The log at `control_url`, spoken to as `credential`.
    pub fn new(control_url: &str, credential: &Credential) -> Self {
        let base = tessera_tls::internal::system_url(control_url.trim_end_matches('/'));
        let base = base.as_ref();
        // Plain HTTP, or TLS with the system's identities (mutual TLS on): the lean client.
        let internal = tessera_tls::internal::get();
        let rest = match internal {
            Some(_) => base.strip_prefix("https://"),
            None => base.strip_prefix("http://"),
        };
        let lean = rest.and_then(|rest| {
            let (address, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            (!address.is_empty() && !address.contains('@')).then_some((address, prefix))
        });
        let transport = match lean {
            Some((address, prefix)) => Transport::Lean {
                address: address.into(),
                prefix: prefix.into(),
                pool: Arc::new(tessera_http1::pool::Pool::new(64, Duration::from_secs(1))),
                identity: internal.map(|tls| tls.identity_of("control")),
            },
            None => Transport::Reqwest {
                base: base.to_string(),
                http: reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(1))
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build()
                    .expect("reqwest client builds"),
            },
        };
        Self {
            transport,
            authorization: credential.authorization().into(),
        }
    }

    /// POSTs a JSON `body` to `path`; the answer's status and body.
    async fn exchange(
        &self,
        path: &str,
        body: String,
        timeout: Duration,
    ) -> Result<(http::StatusCode, bytes::Bytes), String> {
        match &self.transport {
            Transport::Lean {
                address,
                prefix,
                pool,
                identity,
            } => {
                let target: std::borrow::Cow<'_, str> = if prefix.is_empty() {
                    path.into()
                } else {
                    format!("{prefix}{path}").into()
                };
                let req = tessera_http1::pool::Outgoing {
                    method: &http::Method::POST,
                    path_and_query: &target,
                    headers: tessera_http1::fields::Fields::empty(),
                    skip: |_| false,
                    extra: &[
                        ("content-type", b"application/json"),
                        ("authorization", self.authorization.as_bytes()),
                    ],
                    deadline_ms: None,
                    traceparent: None,
                    body: body.as_bytes(),
                    replayable: true,
                    upgrade: false,
                    identity: identity.as_ref(),
                };
                match tokio::time::timeout(timeout, pool.send(address, &req, MAX_ANSWER)).await {
                    Ok(Ok(answer)) => Ok((answer.status, answer.body)),
                    Ok(Err(e)) => Err(match e {
                        SendError::Connect => format!("cannot connect to {address}"),
                        SendError::Failed => format!("the exchange with {address} failed"),
                        SendError::TooLarge => {
                            format!("{address} answered more than {MAX_ANSWER} bytes")
                        }
                    }),
                    Err(_) => Err(format!("no answer within {timeout:?} ({address})")),
                }
            }
            Transport::Reqwest { base, http } => {
                let resp = http
                    .post(format!("{base}{path}"))
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .header(http::header::AUTHORIZATION, &*self.authorization)
                    .body(body)
                    .timeout(timeout)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = resp.status();
                let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
                Ok((status, bytes))
            }
        }
    }

    async fn post(
        &self,
        path: String,
        body: String,
        timeout: Duration,
    ) -> Result<bytes::Bytes, BusError> {
        let (status, bytes) = self
            .exchange(&path, body, timeout)
            .await
            .map_err(BusError::Unavailable)?;
        if status.is_success() {
            return Ok(bytes);
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Err(match status.as_u16() {
            // The process's own credential: nothing about the request, and only a restart
            // with a good one helps; retried (and said loudly by the caller) meanwhile.
            401 => BusError::Unavailable(format!(
                "the log does not accept this process's credential: {text}"
            )),
            // A proxy's or limiter's way of saying later: nothing about the events.
            404 | 405 | 408 | 429 => BusError::Unavailable(text),
            403 => BusError::Forbidden(text),
            409 => BusError::Lost(text),
            413 => BusError::TooLarge(text),
            400..=499 => BusError::Refused(text),
            _ => BusError::Unavailable(text),
        })
    }

    /// Appends the events in `body` (`{"events": [...]}`) to `topic`.
    async fn append(&self, topic: &str, body: String) -> Result<(), BusError> {
        self.post(
            format!("/v1/topics/{topic}/events"),
            body,
            Duration::from_secs(10),
        )
        .await
        .map(drop)
    }

    /// One fetch exchange (of every held partition), carrying the previous batch's commits.
    async fn fetch_with(
        &self,
        topic: &str,
        group: &str,
        consumer: &str,
        commits: &[(u32, i64)],
        max: usize,
        wait: Duration,
    ) -> Fetched {
        let positions: Vec<Position> = commits
            .iter()
            .map(|&(partition, offset)| Position { partition, offset })
            .collect();
        let body = FetchRequest {
            group: group.into(),
            consumer: consumer.into(),
            max,
            wait_ms: wait.as_millis() as u64,
            commit: None,
            commits: positions.into(),
            all: true,
        };
        let body = serde_json::to_string(&body).expect("a fetch request serializes");
        let bytes = match self
            .post(
                format!("/v1/topics/{topic}/fetch"),
                body,
                wait + Duration::from_secs(10),
            )
            .await
        {
            Ok(b) => b,
            Err(e) => return (None, Err(e)),
        };
        read_fetch_answer(&bytes, !commits.is_empty())
    }
}

/// Reads the log's answer to a fetch: whether the commit sent with it (`committing`) was made,
/// and the batch, each event parsed as a CloudEvent or kept as why it is not one (public for
/// the fuzz targets).
pub fn read_fetch_answer(bytes: &[u8], committing: bool) -> Fetched {
    let fetched: FetchAnswer<'_> = match serde_json::from_slice(bytes) {
        Ok(f) => f,
        Err(e) => {
            return (
                None,
                Err(BusError::Unavailable(format!("bad fetch answer: {e}"))),
            );
        }
    };
    let committed = committing.then_some(match fetched.commit_error {
        None => Ok(()),
        Some(e) => Err(match e.status.unwrap_or(503) {
            409 => BusError::Lost(e.message),
            400..=499 => BusError::Refused(e.message),
            _ => BusError::Unavailable(e.message),
        }),
    });
    let events = |partition: u32, delivered: Vec<Delivered<'_>>| {
        delivered
            .into_iter()
            .map(|d| {
                let event = serde_json::from_str(d.event.get())
                    .map(|mut event: Event| {
                        event.delivery = Some(Delivery {
                            partition,
                            offset: d.offset,
                            producer: d.producer.map(Cow::into_owned),
                        });
                        event
                    })
                    // Why, then the text itself on the next line (a parser's message has none).
                    .map_err(|e| format!("{e}\n{}", d.event.get()));
                (d.offset, event)
            })
            .collect()
    };
    let mut parts = Vec::with_capacity(1 + fetched.more.len());
    if let Some(partition) = fetched.partition {
        parts.push(Part {
            partition,
            events: events(partition, fetched.events),
        });
    }
    for more in fetched.more {
        parts.push(Part {
            partition: more.partition,
            events: events(more.partition, more.events),
        });
    }
    let lease = fetched.lease_ms.map(Duration::from_millis);
    (committed, Ok(Batch { parts, lease }))
}

impl Bus for ControlBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [Event],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let body = serde_json::to_string(&PublishRequest { events })
                .map_err(|e| BusError::Refused(e.to_string()))?;
            self.append(topic, body).await
        })
    }

    fn publish_json<'a>(
        &'a self,
        topic: &'a str,
        events: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let mut body =
                String::with_capacity(16 + events.iter().map(|e| e.len() + 1).sum::<usize>());
            body.push_str("{\"events\":[");
            for (i, event) in events.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(event);
            }
            body.push_str("]}");
            self.append(topic, body).await
        })
    }

    fn fetch<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Batch, BusError>> {
        Box::pin(async move {
            self.fetch_with(topic, group, consumer, &[], max, wait)
                .await
                .1
        })
    }

    fn commit_and_fetch<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        commits: &'a [(u32, i64)],
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'a, Fetched> {
        Box::pin(self.fetch_with(topic, group, consumer, commits, max, wait))
    }

    fn renew<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
    ) -> BoxFuture<'a, Result<Vec<u32>, BusError>> {
        Box::pin(async move {
            let body = RenewRequest {
                group: group.into(),
                consumer: consumer.into(),
            };
            let body = serde_json::to_string(&body).expect("a renew request serializes");
            let bytes = self
                .post(
                    format!("/v1/topics/{topic}/renew"),
                    body,
                    Duration::from_secs(5),
                )
                .await?;
            serde_json::from_slice::<RenewAnswer>(&bytes)
                .map(|a| a.partitions)
                .map_err(|e| BusError::Unavailable(format!("bad renew answer: {e}")))
        })
    }

    fn commit<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        consumer: &'a str,
        partition: u32,
        offset: i64,
    ) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            let body = CommitRequest {
                group: group.into(),
                consumer: consumer.into(),
                partition,
                offset,
            };
            let body = serde_json::to_string(&body).expect("a commit request serializes");
            self.post(
                format!("/v1/topics/{topic}/commit"),
                body,
                Duration::from_secs(10),
            )
            .await
            .map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A credential of the right form; these logs do not check it.
    fn anyone() -> Credential {
        Credential::parse("admin.k1.AAAA").unwrap()
    }

    fn lean(url: &str) -> Option<(String, String)> {
        match ControlBus::new(url, &anyone()).transport {
            Transport::Lean {
                address, prefix, ..
            } => Some((address.to_string(), prefix.to_string())),
            Transport::Reqwest { .. } => None,
        }
    }

    #[test]
    fn plain_http_urls_take_the_lean_client_and_keep_their_path() {
        assert_eq!(
            lean("http://127.0.0.1:8500"),
            Some(("127.0.0.1:8500".into(), "".into()))
        );
        assert_eq!(
            lean("http://control.internal:80/tessera/"),
            Some(("control.internal:80".into(), "/tessera".into()))
        );
        for other in [
            "https://control:8500",
            "http://user@control:8500",
            "http://",
        ] {
            assert_eq!(lean(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_log_is_unavailable_on_either_transport() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for url in [
            format!("http://127.0.0.1:{port}"),
            format!("http://127.0.0.1:{port}/"),
        ] {
            let bus = ControlBus::new(&url, &anyone());
            let e = bus.publish_json("t", &["{}"]).await.unwrap_err();
            assert!(
                matches!(&e, BusError::Unavailable(m) if m.contains("cannot connect")),
                "{e}"
            );
            let (committed, fetched) = bus
                .commit_and_fetch("t", "g", "c", &[(0, 1)], 10, Duration::from_millis(10))
                .await;
            assert!(committed.is_none(), "the commit's outcome is unknown");
            assert!(fetched.unwrap_err().is_retryable());
        }
        let e = ControlBus::new(&format!("https://127.0.0.1:{port}"), &anyone())
            .publish_json("t", &["{}"])
            .await
            .unwrap_err();
        assert!(e.is_retryable(), "{e}");
    }
}

//! Keep-alive connections to upstream instances, on hyper's connection-level HTTP/1 client.
//!
//! A request takes an idle connection to its instance (or opens one), sends, and gives the
//! connection back once the response body has been read. Idle connections live in a short
//! list per instance address under one lock held for a pop or a push; nothing else is shared.
//! This replaces `hyper_util`'s pooled client on the proxy's path, whose generality (connector
//! service, URI-keyed pool with waiters, per-request URI building) cost more than the pool.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::proxy::Body;

/// Why a request reached no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect,
    /// The connection failed while the request was in flight.
    Failed,
}

pub struct Pool {
    idle: Mutex<HashMap<Box<str>, Vec<SendRequest<Body>>>>,
    max_idle_per_instance: usize,
    connect_timeout: Duration,
}

/// A connection in use; [`Pooled::release`] gives it back once the response has been read to
/// its end. Dropped instead (a body left unread, a failure), it closes.
pub struct Pooled<'a> {
    pool: &'a Pool,
    address: &'a str,
    sender: SendRequest<Body>,
}

impl Pooled<'_> {
    /// The response has been read to its end: the connection can serve another request.
    pub fn release(self) {
        self.pool.put(self.address, self.sender);
    }
}

impl Pool {
    pub fn new(max_idle_per_instance: usize, connect_timeout: Duration) -> Self {
        Self {
            idle: Mutex::default(),
            max_idle_per_instance,
            connect_timeout,
        }
    }

    /// Sends `req` (origin-form URI; the `Host` header is set here) to `address`.
    pub async fn send<'a>(
        &'a self,
        address: &'a str,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Pooled<'a>), SendError> {
        if let Ok(host) = HeaderValue::from_str(address) {
            req.headers_mut().insert(http::header::HOST, host);
        }
        // A kept-alive connection may have been closed by the instance while idle; hyper then
        // hands the unsent request back, and it goes out on a fresh connection.
        while let Some(mut sender) = self.take(address) {
            // Ready at once, unless the connection's task has yet to see the last response's
            // end; an error means it closed meanwhile.
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    return Ok((
                        resp,
                        Pooled {
                            pool: self,
                            address,
                            sender,
                        },
                    ));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Failed),
                },
            }
        }
        let mut sender = self.connect(address).await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((
                resp,
                Pooled {
                    pool: self,
                    address,
                    sender,
                },
            )),
            Err(_) => Err(SendError::Failed),
        }
    }

    fn take(&self, address: &str) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(address)?;
        while let Some(sender) = list.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn put(&self, address: &str, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return; // the instance closed it (`Connection: close`, or gone)
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = match idle.get_mut(address) {
            Some(list) => list,
            None => idle.entry(address.into()).or_default(),
        };
        if list.len() < self.max_idle_per_instance {
            list.push(sender);
        }
    }

    async fn connect(&self, address: &str) -> Result<SendRequest<Body>, SendError> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(address))
            .await
            .map_err(|_| SendError::Connect)?
            .map_err(|_| SendError::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| SendError::Connect)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Forgets closed connections (their instance closed them or went away).
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, list| {
            list.retain(|s| !s.is_closed());
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    /// A tiny HTTP/1.1 upstream that counts the connections it accepted.
    async fn upstream() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let host = req.headers().get("host").cloned();
                        let body = format!("{} {:?}", req.uri(), host);
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            body,
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (address, accepted)
    }

    async fn get(pool: &Pool, address: &str, path: &str) -> String {
        let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
        let (resp, conn) = pool.send(address, req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        conn.release();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn reuses_connections_and_sets_the_host() {
        let (address, accepted) = upstream().await;
        let pool = Pool::new(4, Duration::from_secs(1));
        for i in 0..5 {
            let body = get(&pool, &address, &format!("/x?i={i}")).await;
            assert_eq!(body, format!("/x?i={i} Some({:?})", address));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connections_the_instance_closes_are_replaced() {
        // An upstream that closes every connection after one response.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            "ok",
                        ))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let pool = Pool::new(4, Duration::from_secs(1));
        for _ in 0..5 {
            assert_eq!(get(&pool, &address, "/").await, "ok");
        }
    }

    #[tokio::test]
    async fn refused_connections_are_reported() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let pool = Pool::new(4, Duration::from_secs(1));
        let req = Request::get("/").body(Full::new(Bytes::new())).unwrap();
        assert!(matches!(
            pool.send(&address, req).await,
            Err(SendError::Connect)
        ));
    }
}

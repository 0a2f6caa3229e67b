//! How a service (and the control plane) serves its API: axum's server over plain TCP on one
//! machine, or, with mutual TLS on (`tessera_tls::internal`), over TLS with a client
//! certificate required from the system CA. A caller whose certificate names an identity the
//! server does not accept (a service is called by the gateway, the operators, and the
//! services the manifest says call it: `TESSERA_TLS_CALLERS`) is refused once its handshake
//! shows who it is, before any request is read (the connection is closed; the caller sees a
//! failed call). The identity of an accepted one is in each request's extensions as a
//! [`Peer`], for checks that go further (the control plane binds it to the credential).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tessera_tls::Identity;
use tessera_tls::internal::Internal;
use tokio::net::TcpListener;

/// Who is calling, as their certificate proved (mutual TLS only).
#[derive(Clone, Debug)]
pub struct Peer(pub Identity);

/// The identities a service accepts calls from: `TESSERA_TLS_CALLERS` (principals, comma
/// separated), or the gateway, the operators and the control plane (which asks for the
/// console) when it is not set.
pub fn callers_from_env(tls: &Internal) -> Vec<Identity> {
    let list = std::env::var("TESSERA_TLS_CALLERS")
        .unwrap_or_else(|_| "gateway,supervisor,admin,control".into());
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| tls.identity_of(p))
        .collect()
}

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in flight
/// finish for at most `drain`; over mutual TLS accepting only `callers` when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<(&Internal, Vec<Identity>)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let Some((tls, callers)) = tls else {
        return axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
    };
    let config = tls
        .server_config(&[b"http/1.1"])
        .map_err(std::io::Error::other)?;
    let acceptor = tessera_tls::TlsAcceptor::from(config);
    let callers = Arc::new(callers);
    // Connections are told to finish (keep-alive off, in flight answered) through `stop`.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, callers, router) = (acceptor.clone(), callers.clone(), router.clone());
        let mut stopping = stopping.clone();
        while connections.try_join_next().is_some() {}
        connections.spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    return tracing::warn!(%peer, error = %e, "mutual TLS: handshake refused");
                }
                Err(_) => return tracing::warn!(%peer, "mutual TLS: handshake not done in time"),
            };
            let certificates = tls.get_ref().1.peer_certificates();
            let Some(identity) =
                tessera_tls::identity::peer_identity(certificates, callers.iter()).cloned()
            else {
                return tracing::warn!(%peer, "mutual TLS: a caller this service does not accept");
            };
            let service = tower::ServiceExt::map_request(
                router,
                move |mut req: axum::extract::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(Peer(identity.clone()));
                    req
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stopping.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(drain, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!("drain deadline passed");
    }
    Ok(())
}

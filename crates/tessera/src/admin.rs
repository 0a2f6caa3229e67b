//! A service's admin listener: `/metrics`, `/status/resilience` and `/status/process` (and
//! `/health/*` again), on an address of its own, loopback by default.
//!
//! What they tell (request counts per route, the client's breakers and the instances it
//! calls) is for the operator and the platform's tools, and the main port answers nothing but
//! `/health/*` without a passport (`docs/passport.md`). A listener of their own keeps them off
//! it by where they are bound, with no passport to mint for a scraper. Its address is
//! `TESSERA_ADMIN_LISTEN` (the runner, or an operator, may set it; by default a free loopback
//! port), and the instance registers it as its `admin` metadata, so tools find it in the
//! registry.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::client::ServiceClient;
use crate::health::Health;

/// The key of the instance's registry metadata that holds its admin address.
pub const METADATA_KEY: &str = "admin";

/// The variable the runner sets, at each start of a process, to how many times it restarted
/// it before: an instance registers it (`restarts` metadata), and every admin listener tells
/// it (`/status/process`).
pub const RESTARTS_ENV: &str = "TESSERA_RESTARTS";

/// What an admin listener tells of its process (`GET /status/process`): what the console's
/// services page shows of a process, the gateways included (they do not register).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Process {
    /// The instance's name (`order-1`, `gateway-0`).
    pub instance: String,
    pub version: String,
    pub pid: u32,
    /// Unix seconds.
    pub started: u64,
    /// How many times the runner restarted it before this start.
    pub restarts: u32,
}

static PROCESS: OnceLock<Process> = OnceLock::new();

impl Process {
    /// Records this process as `instance` at `version`, started now (the first call wins: a
    /// process is one instance).
    pub fn init(instance: &str, version: &str) -> &'static Process {
        PROCESS.get_or_init(|| Process {
            instance: instance.to_string(),
            version: version.to_string(),
            pid: std::process::id(),
            started: crate::unix_now(),
            restarts: std::env::var(RESTARTS_ENV)
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        })
    }

    /// This process, if [`Process::init`] was called.
    pub fn get() -> Option<&'static Process> {
        PROCESS.get()
    }

    /// This process as the JSON `/status/process` answers.
    pub fn json() -> String {
        serde_json::to_string(&Self::get()).expect("a process serializes")
    }
}

/// The admin endpoints.
pub fn router(health: &Health, client: ServiceClient) -> Router {
    health
        .routes()
        .route("/metrics", get(crate::metrics::endpoint))
        .route(
            "/status/process",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    Process::json(),
                )
            }),
        )
        .route(
            "/status/resilience",
            get(move || {
                let status = client.status();
                async move { axum::Json(status) }
            }),
        )
}

/// Serves `router` on `listener` until `stop` completes; the address it serves on.
pub fn serve(
    listener: TcpListener,
    router: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let address = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::warn!(error = %e, "admin listener failed");
        }
    });
    Ok((address, task))
}

//! For the control plane's own tests: its routes served on a port of their own, behind the
//! credential check, with keys to make the credentials of whoever a test plays.

use std::sync::Arc;

use axum::Router;
use tessera::identity::{ControlKeys, Credential, Principal};

use crate::{Grants, Policy};

/// Routes served behind the check; what a test needs to call them.
pub struct Served {
    pub url: String,
    pub keys: Arc<ControlKeys>,
}

impl Served {
    /// A credential of `principal` (`service:<name>`, `gateway`, `supervisor`, `admin`).
    pub fn credential(&self, principal: &str) -> Credential {
        self.keys
            .issue(&Principal::parse(principal).expect("a principal"))
    }
}

/// A policy that lets `service` produce and consume `topics`.
pub fn policy(service: &str, topics: &[&str]) -> Arc<Policy> {
    let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
    Arc::new(Policy::new([(
        service.to_string(),
        Grants {
            produces: topics.clone(),
            consumes: topics,
        },
    )]))
}

/// Serves `routes` behind the credential check and `policy` on a port of its own.
pub async fn serve(routes: Router, policy: Arc<Policy>) -> Served {
    let keys =
        Arc::new(ControlKeys::from_spec(&ControlKeys::generate_spec(1)).expect("fresh keys read"));
    let app = crate::guarded(routes, keys.clone(), policy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Served { url, keys }
}

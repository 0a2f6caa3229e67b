//! The bare upstream: axum, nothing else. `BENCH_LISTEN` (default 127.0.0.1:0) sets the
//! address; with `TESSERA_CONTROL_URL` it also registers itself as `TESSERA_SERVICE` so that a
//! Tessera gateway can route to it, proving who it is with `TESSERA_CREDENTIAL`. It prints its
//! address on the first line.

use std::collections::BTreeMap;
use std::time::Duration;

use tessera::identity::Credential;
use tessera::registry::{Instance, Registration, RegistryClient, keep_registered};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::var("BENCH_LISTEN").unwrap_or_else(|_| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let address = listener.local_addr()?;
    println!("{address}");
    let _registration = match std::env::var("TESSERA_CONTROL_URL") {
        Ok(control) => {
            let service = std::env::var("TESSERA_SERVICE").unwrap_or_else(|_| "bench".into());
            let reg = Registration {
                instance: Instance {
                    id: std::env::var("TESSERA_INSTANCE")
                        .unwrap_or_else(|_| format!("{service}-1")),
                    service,
                    address: address.to_string(),
                    version: "bench".into(),
                    metadata: BTreeMap::from([("pid".into(), std::process::id().to_string())]),
                    weight: None,
                },
                ttl_ms: 3000,
            };
            let credential = Credential::from_env()?
                .ok_or_else(|| anyhow::anyhow!("TESSERA_CREDENTIAL is not set"))?;
            let client = RegistryClient::new(&control, &credential);
            client.register(&reg).await?;
            Some(keep_registered(client, reg, Duration::from_secs(1)))
        }
        Err(_) => None,
    };
    axum::serve(listener, tessera_bench::router()).await?;
    Ok(())
}

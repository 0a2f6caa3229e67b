//! The same handler as a Tessera service: passport check, trace, metrics and a log line per
//! request, as every service of the platform has.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tessera::Service::new("bench")
        .run(|_ctx| async { Ok(tessera_bench::router()) })
        .await
}

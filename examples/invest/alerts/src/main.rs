#[tokio::main]
async fn main() -> anyhow::Result<()> {
    invest_alerts::run().await
}

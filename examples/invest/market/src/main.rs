#[tokio::main]
async fn main() -> anyhow::Result<()> {
    invest_market::run().await
}

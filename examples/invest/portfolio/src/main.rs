#[tokio::main]
async fn main() -> anyhow::Result<()> {
    invest_portfolio::run().await
}

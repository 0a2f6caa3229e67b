#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_catalog::run().await
}

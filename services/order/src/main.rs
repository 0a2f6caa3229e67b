#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_order::run().await
}

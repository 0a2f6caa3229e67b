#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_auth::run().await
}

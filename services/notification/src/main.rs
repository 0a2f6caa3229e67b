#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_notification::run().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_payment_provider::run().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_inventory::run().await
}

/// mimalloc returns freed memory to the system: each Argon2id hash takes 19 MiB, which glibc's
/// allocator kept resident per blocking thread (160 MB after a burst of 20 logins).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shop_auth::run().await
}

fn main() -> anyhow::Result<()> {
    return_large_blocks_at_once();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(shop_auth::run())
}

/// Each Argon2id hash takes a 19 MiB block. glibc's allocator raises its mmap threshold after
/// the first such block is freed and from then on keeps them in its arenas: 160 MB resident
/// after a burst of 20 logins. A fixed threshold makes every block above 1 MiB its own
/// mapping, returned to the system when the hash ends.
fn return_large_blocks_at_once() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's settings, and runs before any other thread
    // of this process exists.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

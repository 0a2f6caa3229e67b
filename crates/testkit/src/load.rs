//! A steady load through the gateway, as many users make it, for tests that change the system
//! while it serves (a reload, a rollout): every request that is not answered as it should be
//! is kept, to say which failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::System;

/// Requests through the gateway from many users at once, until finished.
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    /// `users` signed-in users, each reading the catalog and who they are about ten times a
    /// second (twice every 100 ms), on connections of their own (kept alive throughout).
    pub async fn start(sys: &System, users: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..users {
            let (token, _) = sys.new_user().await;
            let http = reqwest::Client::new();
            let (catalog, me) = (sys.url("/api/catalog/products"), sys.url("/api/auth/me"));
            let (stop, answered) = (stop.clone(), answered.clone());
            tasks.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for url in [&catalog, &me] {
                        let answer = http.get(url).bearer_auth(&token).send().await;
                        match answer {
                            Ok(resp) if resp.status() == 200 => {}
                            Ok(resp) => failures.push(format!(
                                "{url}: {} {}",
                                resp.status(),
                                resp.text().await.unwrap_or_default()
                            )),
                            Err(e) => failures.push(format!("{url}: {e}")),
                        }
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                failures
            }));
        }
        Self {
            stop,
            answered,
            tasks,
        }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops it: how many requests, and the failures.
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        for task in self.tasks {
            failures.extend(task.await.unwrap());
        }
        (self.answered.load(Ordering::Relaxed), failures)
    }
}

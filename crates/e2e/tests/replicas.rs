//! A primary and a streaming read replica (a PostgreSQL of the test's own), the shop on them:
//! reads that may be a moment behind go to the replica, but a caller that sends back what its
//! write answered (`tessera-read-after`) never reads behind its own write, even with the
//! replica held back on purpose.

use std::time::Duration;

use serde_json::json;
use tessera_testkit::postgres::{Cluster, psql, with_database};
use tessera_testkit::{Options, System};

/// Read transactions the replica has run in `database`.
fn replica_reads(replica: &str, database: &str) -> i64 {
    psql(
        replica,
        &format!("SELECT xact_commit FROM pg_stat_database WHERE datname = '{database}'"),
    )
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_reads_its_own_writes_through_a_lagging_replica_and_others_read_from_it() {
    let pg = Cluster::start(true);
    let replica = pg.replica.clone().unwrap();
    // The replica applies what it receives 300 ms late: a read of a fresh write there would
    // find nothing.
    psql(
        &replica,
        "ALTER SYSTEM SET recovery_min_apply_delay = '300ms'",
    );
    psql(&replica, "SELECT pg_reload_conf()");
    let sys = System::start_with(Options {
        checkout: true,
        postgres: Some((pg.primary.clone(), Some(replica.clone()))),
        ..Options::default()
    })
    .await;
    let (token, _) = sys.new_user().await;

    // A thousand orders, each read back at once (eight callers at a time, one session).
    let sys = std::sync::Arc::new(sys);
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..8 {
        let (sys, token) = (sys.clone(), token.clone());
        callers.spawn(async move {
            for i in 0..125 {
                let product = format!(
                    "0190f000-0000-7000-8000-0000000000{:02}",
                    1 + (caller * 3 + i) % 25
                );
                let order = sys
                    .place_order(&token, json!([{"productId": product, "quantity": 1}]))
                    .await;
                let (status, body) = sys.get(&format!("/api/orders/{order}"), Some(&token)).await;
                assert_eq!(status, 200, "order {order} read back at once: {body}");
                assert_eq!(body["data"]["orderId"], order.as_str());
            }
        });
    }
    while let Some(done) = callers.join_next().await {
        done.unwrap();
    }

    // Without a write to wait for, reads go to the replica: counted on the replica itself.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = replica_reads(&replica, &sys_database(&sys, "order"));
    for _ in 0..50 {
        let resp = sys
            .http
            .get(sys.url("/api/orders"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let after = replica_reads(&replica, &sys_database(&sys, "order"));
    assert!(
        after - before >= 50,
        "the replica served the plain reads: {} more read transactions there",
        after - before
    );
}

/// The name of the database `service` of `sys` uses (from its manifest's template).
fn sys_database(sys: &System, service: &str) -> String {
    let manifest = std::fs::read_to_string(sys.dir.join("tessera.toml")).unwrap();
    let template = manifest
        .lines()
        .find_map(|l| l.strip_prefix("database = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let url = template.replace("{service}", service);
    let db = url.rsplit_once('/').unwrap().1.to_string();
    // The replica's URL names the same database.
    let _ = with_database(&url, &db);
    db
}

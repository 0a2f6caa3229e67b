//! A primary and a streaming read replica (a PostgreSQL of the test's own), the shop on them:
//! reads that may be a moment behind go to the replica, but a caller that sends back what its
//! write answered (`tessera-read-after`) never reads behind its own write, even with the
//! replica held back on purpose.

use std::time::Duration;

use serde_json::json;
use tessera_testkit::postgres::{Cluster, psql, with_database};
use tessera_testkit::{Options, System};

/// Rows the replica has read from tables of `database` (its own count, which the replicas'
/// watcher, reading no table, does not add to).
fn replica_rows(replica: &str, database: &str) -> i64 {
    psql(
        replica,
        &format!(
            "SELECT tup_returned + tup_fetched FROM pg_stat_database WHERE datname = '{database}'"
        ),
    )
    .parse()
    .unwrap_or(0) // the replica has not replayed the database's creation yet
}

/// Waits (10 s at most: a server publishes its counts about a second late) until the replica
/// has read at least `rows` more rows of `database` than `before`; whether it did.
async fn replica_read(replica: &str, database: &str, before: i64, rows: i64) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if replica_rows(replica, database) - before >= rows {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
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
    let before = replica_rows(&replica, &sys_database(&sys, "order"));
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
    assert!(
        replica_read(&replica, &sys_database(&sys, "order"), before, 50).await,
        "the replica served the plain reads (each reads rows there)"
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

/// A new customer with one order (the catalog's reads are the primary's, as they may be
/// cached: the order service's lists are what a replica serves here).
async fn customer_with_an_order(sys: &System) -> String {
    let (token, _) = sys.new_user().await;
    sys.place_order(
        &token,
        serde_json::json!([{"productId": "0190f000-0000-7000-8000-000000000005", "quantity": 1}]),
    )
    .await;
    token
}

/// The customer's orders, read as a client without a session would (the replica may answer).
async fn read_orders(sys: &System, token: &str) -> u16 {
    sys.http
        .get(sys.url("/api/orders"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The replica stopped: reads go to the primary at once, without an error; started again, it
/// serves reads again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_goes_down_is_skipped_and_comes_back_by_itself() {
    let pg = Cluster::start(true);
    let replica = pg.replica.clone().unwrap();
    let sys = System::start_with(Options {
        checkout: true,
        postgres: Some((pg.primary.clone(), Some(replica.clone()))),
        ..Options::default()
    })
    .await;
    let token = customer_with_an_order(&sys).await;
    let list = async || read_orders(&sys, &token).await;
    let orders = sys_database(&sys, "order");
    let before = replica_rows(&replica, &orders);
    for _ in 0..20 {
        assert_eq!(list().await, 200);
    }
    assert!(
        replica_read(&replica, &orders, before, 20).await,
        "the replica serves"
    );

    // Down: every read still answered, by the primary.
    let replica_pid = std::fs::read_to_string(pg.dir().join("replica/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse::<u32>()
        .unwrap();
    // An immediate shutdown (SIGQUIT: the server and its processes stop at once, as in a
    // crash, without the orphans a SIGKILL of the postmaster alone would leave).
    tessera_testkit::signal(replica_pid, libc::SIGQUIT);
    while tessera_testkit::alive(replica_pid) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..50 {
        assert_eq!(list().await, 200);
    }
    sys.log_line("the replica left out", |l| {
        l.contains("read replica failed")
    })
    .await;

    // Back: it serves again.
    pg.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let before = replica_rows(&replica, &orders);
        for _ in 0..20 {
            assert_eq!(list().await, 200);
        }
        if replica_read(&replica, &orders, before, 20).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never came back"
        );
    }
}

/// A replica that has not yet replayed the service's own migrations (held back by 2 s here)
/// does not have its tables: it serves nothing until it has caught up with them, and reads
/// meanwhile are answered by the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_behind_the_schema_serves_nothing_until_it_has_it() {
    let pg = Cluster::start(true);
    let replica = pg.replica.clone().unwrap();
    psql(&replica, "ALTER SYSTEM SET recovery_min_apply_delay = '2s'");
    psql(&replica, "SELECT pg_reload_conf()");
    let sys = System::start_with(Options {
        checkout: true,
        postgres: Some((pg.primary.clone(), Some(replica.clone()))),
        ..Options::default()
    })
    .await;
    // Reads while the replica is behind (the system is up within its delay) are the
    // primary's, without an error.
    let token = customer_with_an_order(&sys).await;
    for _ in 0..20 {
        assert_eq!(read_orders(&sys, &token).await, 200);
    }
    // Once the replica has the schema (and the order), it serves.
    let orders = sys_database(&sys, "order");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let before = replica_rows(&replica, &orders);
        for _ in 0..20 {
            assert_eq!(read_orders(&sys, &token).await, 200);
        }
        if replica_read(&replica, &orders, before, 20).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never served"
        );
    }
}

//! Events through the platform, in-process over real sockets: a service publishes through its
//! outbox, another consumes through its inbox, via the control plane's embedded log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};
use tessera::events::{BoxFuture, Consumer, Event, Handler, HandlerError, Tx, outbox};
use tessera::identity::{ControlKeys, Principal};
use tessera::{ApiError, Db, Json, Migration, Service, ServiceConfig, Settings};
use tokio::net::TcpListener;

const LEDGER: &[Migration] = &[Migration {
    version: 1,
    description: "ledger",
    sqlite: "CREATE TABLE entries (id TEXT PRIMARY KEY, amount INTEGER NOT NULL);",
}];
const AUDIT: &[Migration] = &[Migration {
    version: 1,
    description: "audit",
    sqlite: "CREATE TABLE seen (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, subject TEXT NOT NULL, n INTEGER NOT NULL, trace TEXT);",
}];

struct Harness {
    control: String,
    dir: std::path::PathBuf,
    keys: String,
    /// The control plane's keys, to make each caller's credential.
    control_keys: Arc<ControlKeys>,
    http: reqwest::Client,
}

impl Harness {
    async fn new() -> (Self, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let control = format!("http://{}", listener.local_addr().unwrap());
        let dir = std::env::temp_dir().join(format!("tessera-events-{}", uuid::Uuid::new_v4()));
        (
            Self {
                control,
                dir,
                keys: tessera::PassportKeys::generate_spec(),
                control_keys: Arc::new(
                    ControlKeys::from_spec(&ControlKeys::generate_spec(1)).unwrap(),
                ),
                http: reqwest::Client::new(),
            },
            listener,
        )
    }

    fn start_control(&self, listener: TcpListener) {
        let config = tessera_control::ControlConfig {
            settle: Duration::ZERO,
            data_dir: self.dir.join("control"),
            log: tessera_control::events::LogConfig {
                lease: Duration::from_secs(2),
                ..Default::default()
            },
            keys: self.control_keys.clone(),
            principals: Vec::new(), // no mutual TLS here
            // The ledger publishes its events; the auditor reads them.
            policy: Arc::new(tessera_control::Policy::new([
                (
                    "ledger".to_string(),
                    tessera_control::Grants {
                        produces: vec!["ledger.events".into()],
                        consumes: vec![],
                    },
                ),
                (
                    "auditor".to_string(),
                    tessera_control::Grants {
                        produces: vec![],
                        consumes: vec!["ledger.events".into()],
                    },
                ),
                // A log whose policy lets another service publish there too, while the
                // services are told only the ledger does (TESSERA_PRODUCERS, below).
                (
                    "mallory".to_string(),
                    tessera_control::Grants {
                        produces: vec!["ledger.events".into()],
                        consumes: vec![],
                    },
                ),
            ])),
        };
        tokio::spawn(tessera_control::serve(
            listener,
            config,
            std::future::pending(),
        ));
    }

    fn settings(&self, name: &str) -> Settings {
        Settings::from_map([
            ("TESSERA_SERVICE", name.to_string()),
            ("TESSERA_CONTROL_URL", self.control.clone()),
            (
                "TESSERA_CREDENTIAL",
                self.credential(&Principal::Service(name.into())),
            ),
            ("TESSERA_PRODUCERS", "ledger.events=ledger".to_string()),
            ("TESSERA_PASSPORT_KEYS", self.keys.clone()),
            ("TESSERA_SYSTEM", "events-test".to_string()),
            (
                "TESSERA_DATA_DIR",
                self.dir.join("data").display().to_string(),
            ),
        ])
    }

    /// The token of `who`'s control-plane credential.
    fn credential(&self, who: &Principal) -> String {
        self.control_keys.issue(who).token().to_string()
    }

    /// Publishes `events` straight to the log, as the ledger would.
    async fn publish(&self, topic: &str, events: &[Value]) {
        self.publish_as("ledger", topic, events).await
    }

    /// Publishes `events` straight to the log as service `who`.
    async fn publish_as(&self, who: &str, topic: &str, events: &[Value]) {
        let credential = self.credential(&Principal::Service(who.into()));
        let resp = self
            .http
            .post(format!("{}/v1/topics/{topic}/events", self.control))
            .bearer_auth(credential)
            .json(&json!({ "events": events }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
    }

    /// The control plane's answer to `GET path`, as an admin.
    async fn control_json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.control))
            .bearer_auth(self.credential(&Principal::Admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn wait<F: AsyncFnMut() -> bool>(&self, what: &str, mut check: F) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Deposits `n` into account `a` of the ledger at `ledger`; the answer's status.
async fn deposit_n(h: &Harness, ledger: &str, passport: &str, n: i64) -> u16 {
    let body = json!({"id": format!("d{n}"), "amount": n, "account": "a", "n": n});
    post_deposit(h, ledger, passport, &body).await
}

/// Posts `body` to the ledger's deposit; the answer's status.
async fn post_deposit(h: &Harness, ledger: &str, passport: &str, body: &Value) -> u16 {
    h.http
        .post(format!("{ledger}/deposit"))
        .header("x-passport", passport)
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The ledger: a deposit and its event commit together, or neither does.
async fn start_ledger(h: &Harness) -> String {
    let settings = h.settings("ledger");
    let config = ServiceConfig::from_settings(&settings, "ledger").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(Service::new("ledger").migrations(LEDGER).serve(
        config,
        settings,
        listener,
        std::future::pending(),
        |ctx| async move {
            let state = (ctx.db().clone(), ctx.events().outbox.clone());
            Ok(Router::new()
                .route("/deposit", post(deposit))
                .with_state(state))
        },
    ));
    addr
}

async fn deposit(
    State((db, outbox_handle)): State<(Db, tessera::events::outbox::Outbox)>,
    Json(body): Json<Value>,
) -> Result<Json<Value>, ApiError> {
    let id = body["id"].as_str().unwrap_or_default().to_string();
    let mut tx = db.write_tx().await?;
    tessera::store::query("INSERT INTO entries (id, amount) VALUES ($1, $2)")
        .bind(&id)
        .bind(body["amount"].as_i64().unwrap_or(0))
        .execute(&mut *tx)
        .await?;
    let event = Event::new(
        "/ledger",
        "ledger.deposited",
        body["account"].as_str().unwrap_or("acc"),
        &body,
    );
    // A test may name another topic (one the ledger may not publish to).
    let topic = body["topic"].as_str().unwrap_or("ledger.events");
    outbox::add(&mut tx, topic, &event).await?;
    if body["fail"] == true {
        return Err(ApiError::bad_request("refused", "rolled back on purpose")); // tx dropped: rollback
    }
    tx.commit().await?;
    outbox_handle.wake();
    Ok(Json(json!({ "id": id, "eventId": event.id })))
}

struct Audit {
    accept_poison: Arc<AtomicBool>,
}

impl Handler for Audit {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if event.data["poison"] == true && !self.accept_poison.load(Ordering::SeqCst) {
                return Err(HandlerError::permanent("poison"));
            }
            let trace = tessera::client::REQUEST
                .try_with(|r| r.trace.trace_id_hex())
                .ok();
            tessera::store::query(
                "INSERT INTO seen (event_id, subject, n, trace) VALUES ($1, $2, $3, $4)",
            )
            .bind(&event.id)
            .bind(event.subject.clone().unwrap_or_default())
            .bind(event.data["n"].as_i64().unwrap_or(-1))
            .bind(trace)
            .execute(&mut **tx)
            .await?;
            Ok(())
        })
    }
}

async fn start_auditor(h: &Harness, accept_poison: Arc<AtomicBool>) -> Db {
    start_auditor_at(h, accept_poison).await.0
}

/// The auditor's database and its address.
async fn start_auditor_at(h: &Harness, accept_poison: Arc<AtomicBool>) -> (Db, String) {
    start_consumer(h, 2, Audit { accept_poison }).await
}

/// An `auditor` member whose consumer of `ledger.events` runs `handler`, trying each event up
/// to `attempts` times: its database and its address.
async fn start_consumer(h: &Harness, attempts: u32, handler: impl Handler) -> (Db, String) {
    let settings = h.settings("auditor");
    let config = ServiceConfig::from_settings(&settings, "auditor").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(Service::new("auditor").migrations(AUDIT).serve(
        config,
        settings,
        listener,
        std::future::pending(),
        move |ctx| async move {
            let mut consumer = Consumer::new("ledger.events", "auditor");
            consumer.max_attempts = attempts;
            ctx.events().consume(consumer, handler);
            let _ = tx.send(ctx.db().clone());
            Ok(Router::new())
        },
    ));
    (rx.await.unwrap(), address)
}

async fn seen(db: &Db) -> Vec<(String, String, i64, Option<String>)> {
    tessera::store::query_as("SELECT event_id, subject, n, trace FROM seen ORDER BY seq")
        .fetch_all(db.pool())
        .await
        .unwrap()
}

fn passport(h: &Harness) -> String {
    tessera::PassportKeys::from_spec(&h.keys, "events-test")
        .unwrap()
        .mint("test", "u", &[], None, &tessera::TraceContext::new_root())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_to_inbox_exactly_once_in_order_with_dead_letters() {
    let (h, listener) = Harness::new().await;
    h.start_control(listener);
    let ledger = start_ledger(&h).await;
    let accept = Arc::new(AtomicBool::new(false));
    let audit_db = start_auditor(&h, accept.clone()).await;
    let p = passport(&h);
    let trace = tessera::TraceContext::new_root();

    // 30 deposits over 3 accounts, one of them rolled back.
    for n in 0..30 {
        let body = json!({"id": format!("d{n}"), "amount": n, "account": format!("acc{}", n % 3), "n": n, "fail": n == 7});
        let resp = h
            .http
            .post(format!("{ledger}/deposit"))
            .header("x-passport", &p)
            .header("traceparent", trace.header())
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), if n == 7 { 400 } else { 200 });
    }
    h.wait("29 events handled", async || {
        seen(&audit_db).await.len() >= 29
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rows = seen(&audit_db).await;
    assert_eq!(
        rows.len(),
        29,
        "exactly once, and nothing for the rolled-back deposit"
    );
    assert!(!rows.iter().any(|r| r.2 == 7));
    for acc in 0..3 {
        let ns: Vec<i64> = rows
            .iter()
            .filter(|r| r.1 == format!("acc{acc}"))
            .map(|r| r.2)
            .collect();
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "in order per key (acc{acc})");
    }
    assert!(
        rows.iter()
            .all(|r| r.3.as_deref() == Some(trace.trace_id_hex().as_str())),
        "the trace travels with the events"
    );

    // A duplicate injected straight into the log has no second effect.
    let (dup_id, ..) = rows[0].clone();
    let original: Value = {
        let v: Value = h.control_json("/v1/topics").await;
        assert!(
            v["topics"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == "ledger.events")
        );
        json!({"specversion": "1.0", "id": dup_id, "source": "/ledger", "type": "ledger.deposited", "subject": rows[0].1, "data": {"n": 999}})
    };
    h.publish("ledger.events", &[original]).await;

    // A poison event is dead-lettered and the consumer moves on.
    for (id, poison) in [("poison", true), ("after", false)] {
        let body = json!({"id": id, "amount": 1, "account": "acc0", "n": 100, "poison": poison});
        assert_eq!(post_deposit(&h, &ledger, &p, &body).await, 200);
    }
    h.wait("the event after the poison", async || {
        seen(&audit_db).await.len() >= 30
    })
    .await;
    let dead: Value = h.control_json("/v1/deadletters/auditor").await;
    let dead = dead["deadLetters"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["event"]["deadlettererror"], "poison");
    assert_eq!(dead[0]["event"]["deadlettertopic"], "ledger.events");
    assert_eq!(
        seen(&audit_db).await.iter().filter(|r| r.2 == 999).count(),
        0,
        "the duplicate did nothing"
    );

    // Fixed, replayed: handled once.
    accept.store(true, Ordering::SeqCst);
    let replayed: Value = h
        .http
        .post(format!("{}/v1/deadletters/auditor/replay", h.control))
        .bearer_auth(h.credential(&Principal::Admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["replayed"], 1);
    h.wait("the replayed event", async || {
        seen(&audit_db).await.len() >= 31
    })
    .await;
    let replayed: Value = h
        .http
        .post(format!("{}/v1/deadletters/auditor/replay", h.control))
        .bearer_auth(h.credential(&Principal::Admin))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["replayed"], 0, "replayed once only");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(seen(&audit_db).await.len(), 31);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_wait_in_the_outbox_while_the_log_is_down() {
    let (h, listener) = Harness::new().await;
    // The control plane is not serving yet: the bus is unreachable.
    let ledger = start_ledger(&h).await;
    let p = passport(&h);
    for n in 0..5 {
        assert_eq!(
            deposit_n(&h, &ledger, &p, n).await,
            200,
            "the service works without the log"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.start_control(listener);
    let audit_db = start_auditor(&h, Arc::new(AtomicBool::new(true))).await;
    h.wait("the queued events", async || {
        seen(&audit_db).await.len() >= 5
    })
    .await;
    let ns: Vec<i64> = seen(&audit_db).await.iter().map(|r| r.2).collect();
    assert_eq!(ns, [0, 1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_in_a_batch_costs_the_others_nothing() {
    let (h, listener) = Harness::new().await;
    h.start_control(listener);
    // Published in one call before the consumer starts: they are fetched as one batch,
    // handled in one transaction, which the poison event rolls back; then one by one.
    let event = |id: &str, n: i64, poison: bool| {
        json!({"specversion": "1.0", "id": id, "source": "/test", "type": "ledger.deposited",
               "subject": "acc", "data": {"n": n, "poison": poison}})
    };
    let events = [
        event("e1", 1, false),
        event("e2", 2, false),
        event("bad", 3, true),
        event("e1", 99, false), // a duplicate of e1, in the same batch
        event("e4", 4, false),
    ];
    h.publish("ledger.events", &events).await;
    let audit_db = start_auditor(&h, Arc::new(AtomicBool::new(false))).await;
    h.wait("the good events", async || seen(&audit_db).await.len() >= 3)
        .await;
    h.wait("the dead letter", async || {
        let dead: Value = h.control_json("/v1/deadletters/auditor").await;
        dead["deadLetters"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rows: Vec<(String, i64)> = seen(&audit_db)
        .await
        .into_iter()
        .map(|r| (r.0, r.2))
        .collect();
    assert_eq!(
        rows,
        [
            ("e1".to_string(), 1),
            ("e2".to_string(), 2),
            ("e4".to_string(), 4)
        ],
        "each good event once, in order; the duplicate did nothing"
    );

    // A later batch of good events is handled together, after the fallback.
    let later: Vec<Value> = (5..10).map(|n| event(&format!("e{n}"), n, false)).collect();
    h.publish("ledger.events", &later).await;
    h.wait("the later batch", async || seen(&audit_db).await.len() >= 8)
        .await;
    let ns: Vec<i64> = seen(&audit_db).await.iter().map(|r| r.2).collect();
    assert_eq!(ns, [1, 2, 4, 5, 6, 7, 8, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_rows_leave_the_outbox_in_the_background_and_go_out_once() {
    let (h, listener) = Harness::new().await;
    h.start_control(listener);
    let ledger = start_ledger(&h).await;
    let p = passport(&h);
    // One at a time: each deposit is its own relay pass, the case a delete per pass made cost
    // a commit per event.
    for n in 0..20 {
        assert_eq!(deposit_n(&h, &ledger, &p, n).await, 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let in_log = async || -> i64 {
        let v = h.control_json("/v1/topics").await;
        v["topics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["name"] == "ledger.events")
            .flat_map(|t| t["ends"].as_array().unwrap().iter())
            .map(|e| e.as_i64().unwrap())
            .sum()
    };
    h.wait("20 events in the log", async || in_log().await >= 20)
        .await;
    // The ledger's own database, opened as a replica would.
    let db = Db::open(
        &Db::default_url(&h.dir.join("data"), "ledger"),
        tessera::events::MIGRATIONS,
    )
    .await
    .unwrap();
    // Rows left: at most the last one, as a tombstone (it keeps ids from going back).
    let rows = async || -> (i64, i64) {
        tessera::store::query_as(
            "SELECT COUNT(*), COALESCE(SUM(topic <> ''), 0) FROM tessera_outbox",
        )
        .fetch_one(db.pool())
        .await
        .unwrap()
    };
    let started = Instant::now();
    h.wait("an empty outbox", async || rows().await == (1, 0))
        .await;
    assert!(
        started.elapsed() < outbox::DELETE_EVERY * 4,
        "deleted within a few intervals, took {:?}",
        started.elapsed()
    );
    // Remembering what it published, the relay never sent a row twice while it waited to
    // delete it.
    tokio::time::sleep(outbox::DELETE_EVERY).await;
    assert_eq!(in_log().await, 20);
    // With every published row gone, the next event still gets an id past the relay's memory,
    // so it goes out.
    assert_eq!(deposit_n(&h, &ledger, &p, 20).await, 200);
    h.wait("the 21st event in the log", async || in_log().await == 21)
        .await;
    h.wait("the 21st event's row gone", async || rows().await == (1, 0))
        .await;
    tokio::time::sleep(outbox::DELETE_EVERY).await;
    assert_eq!(in_log().await, 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_from_a_service_the_topic_does_not_declare_is_dead_lettered_unhandled() {
    let (h, listener) = Harness::new().await;
    h.start_control(listener);
    let audit_db = start_auditor(&h, Arc::new(AtomicBool::new(false))).await;
    let event = |id: &str, n: i64| {
        json!({"specversion": "1.0", "id": id, "source": "/x", "type": "ledger.deposited",
               "subject": "acc0", "data": {"n": n}})
    };
    // Mallory's event says it is the ledger's: the log's stamp says otherwise.
    let mut forged = event("forged", 666);
    forged["producer"] = json!("service:ledger");
    forged["source"] = json!("/ledger");
    h.publish_as("mallory", "ledger.events", &[forged]).await;
    h.publish("ledger.events", &[event("genuine", 1)]).await;
    h.wait("the ledger's event", async || {
        !seen(&audit_db).await.is_empty()
    })
    .await;
    h.wait("mallory's event dead-lettered", async || {
        let dead = h.control_json("/v1/deadletters/auditor").await;
        !dead["deadLetters"].as_array().unwrap().is_empty()
    })
    .await;
    let handled: Vec<String> = seen(&audit_db).await.into_iter().map(|r| r.0).collect();
    assert_eq!(handled, ["genuine"]);
    let dead = h.control_json("/v1/deadletters/auditor").await;
    let dead = &dead["deadLetters"][0]["event"];
    assert_eq!(dead["id"], "forged");
    assert_eq!(
        dead["deadlettererror"],
        "published by service:mallory, but topic ledger.events is produced by ledger"
    );
    assert_eq!(
        dead["deadletterattempts"], 1,
        "refused at once, not retried"
    );
}

/// The ledger's outbox as its `/status/outbox` tells it.
async fn outbox_status(h: &Harness, ledger: &str) -> Value {
    status_of(h, ledger, "/status/outbox").await
}

/// A passport of another process of the system (role `system`).
fn system_passport(h: &Harness) -> String {
    tessera::PassportKeys::from_spec(&h.keys, "events-test")
        .unwrap()
        .mint(
            "test",
            "service:test",
            &["system".into()],
            None,
            &tessera::TraceContext::new_root(),
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_large_events_goes_out_whole_in_order() {
    let (h, listener) = Harness::new().await;
    // 40 events of 300 KB wait in the outbox: 12 MB, more than the log takes in one request.
    let ledger = start_ledger(&h).await;
    let p = passport(&h);
    let pad = "x".repeat(300_000);
    for n in 0..40 {
        let body = json!({"id": format!("d{n}"), "amount": n, "account": "a", "n": n, "pad": pad});
        assert_eq!(post_deposit(&h, &ledger, &p, &body).await, 200);
    }
    h.start_control(listener);
    let audit_db = start_auditor(&h, Arc::new(AtomicBool::new(true))).await;
    h.wait("the backlog", async || seen(&audit_db).await.len() >= 40)
        .await;
    let ns: Vec<i64> = seen(&audit_db).await.iter().map(|r| r.2).collect();
    assert_eq!(ns, (0..40).collect::<Vec<_>>());
    h.wait("the outbox to empty", async || {
        outbox_status(&h, &ledger).await["pending"] == 0
    })
    .await;
    assert_eq!(outbox_status(&h, &ledger).await["parkedTotal"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_log_refuses_is_parked_visible_and_can_be_requeued() {
    let (h, listener) = Harness::new().await;
    h.start_control(listener);
    let ledger = start_ledger(&h).await;
    let audit_db = start_auditor(&h, Arc::new(AtomicBool::new(true))).await;
    let p = passport(&h);
    // The manifest does not let the ledger publish to `audit.events`: the log forbids it.
    for (id, topic) in [("d0", "audit.events"), ("d1", "ledger.events")] {
        let body = json!({"id": id, "amount": 1, "account": "a", "n": 1, "topic": topic});
        assert_eq!(post_deposit(&h, &ledger, &p, &body).await, 200);
    }
    // The refused one is parked, and the relay goes on with the rest.
    h.wait("the other event", async || seen(&audit_db).await.len() == 1)
        .await;
    h.wait("the refused event parked", async || {
        outbox_status(&h, &ledger).await["parkedTotal"] == 1
    })
    .await;
    let status = outbox_status(&h, &ledger).await;
    let parked = &status["parked"][0];
    assert_eq!(parked["topic"], "audit.events");
    assert!(
        parked["reason"]
            .as_str()
            .unwrap()
            .contains("may not publish to audit.events"),
        "{parked}"
    );
    assert!(parked["event"].as_str().unwrap().contains("\"id\":\"d0\""));
    // Without a passport, or with a user's, the outbox is not shown.
    let anyone = h
        .http
        .get(format!("{ledger}/status/outbox"))
        .send()
        .await
        .unwrap();
    assert_eq!(anyone.status().as_u16(), 401);
    let user = h
        .http
        .get(format!("{ledger}/status/outbox"))
        .header("x-passport", &p)
        .send()
        .await
        .unwrap();
    assert_eq!(user.status().as_u16(), 403);
    // Requeued, it goes out again (and, still forbidden, is parked again: never lost).
    let system = system_passport(&h);
    let requeued: Value = h
        .http
        .post(format!("{ledger}/status/outbox/requeue"))
        .header("x-passport", &system)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(requeued["requeued"], 1);
    h.wait("the event parked again", async || {
        let s = outbox_status(&h, &ledger).await;
        s["parkedTotal"] == 1 && s["pending"] == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_is_not_a_cloudevent_is_dead_lettered_with_why() {
    let (h, listener) = Harness::new().await;
    h.start_control(listener);
    // The log takes it (it has what the log reads), but its `time` is not a string: no
    // consumer can read it as a CloudEvent.
    let bad = json!({"specversion": "1.0", "id": "bad", "source": "/ledger", "type": "ledger.deposited",
                     "subject": "acc0", "time": 12, "data": {"n": 1}});
    let good = json!({"specversion": "1.0", "id": "good", "source": "/ledger", "type": "ledger.deposited",
                      "subject": "acc0", "data": {"n": 2}});
    h.publish("ledger.events", &[bad, good]).await;
    let audit_db = start_auditor(&h, Arc::new(AtomicBool::new(true))).await;
    h.wait("the good event", async || !seen(&audit_db).await.is_empty())
        .await;
    h.wait("the bad one dead-lettered", async || {
        let dead = h.control_json("/v1/deadletters/auditor").await;
        !dead["deadLetters"].as_array().unwrap().is_empty()
    })
    .await;
    let dead = h.control_json("/v1/deadletters/auditor").await;
    let dead = &dead["deadLetters"][0]["event"];
    assert_eq!(dead["type"], "tessera.invalid");
    assert!(
        dead["deadlettererror"]
            .as_str()
            .unwrap()
            .starts_with("not a CloudEvent: "),
        "{dead}"
    );
    assert!(
        !dead["deadlettererror"].as_str().unwrap().contains("\"id\""),
        "the error says why, not what: {dead}"
    );
    assert!(
        dead["data"]["raw"]
            .as_str()
            .unwrap()
            .contains("\"id\":\"bad\""),
        "{dead}"
    );
    assert_eq!(dead["deadlettertopic"], "ledger.events");
    let handled: Vec<String> = seen(&audit_db).await.into_iter().map(|r| r.0).collect();
    assert_eq!(handled, ["good"]);
}

/// Fails event `slow` (a passing failure) until `for_` has gone by since its first attempt,
/// and records who tried which event.
struct Slow {
    member: &'static str,
    attempts: Arc<std::sync::Mutex<Vec<(&'static str, String)>>>,
    first: Arc<std::sync::Mutex<Option<Instant>>>,
    for_: Duration,
}

impl Handler for Slow {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            self.attempts
                .lock()
                .unwrap()
                .push((self.member, event.id.clone()));
            if event.id == "slow" {
                let first = *self.first.lock().unwrap().get_or_insert_with(Instant::now);
                if first.elapsed() < self.for_ {
                    return Err(HandlerError::retry("not yet"));
                }
            }
            tessera::store::query("INSERT INTO seen (event_id, subject, n) VALUES ($1, $2, $3)")
                .bind(&event.id)
                .bind(event.subject.clone().unwrap_or_default())
                .bind(event.data["n"].as_i64().unwrap_or(-1))
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_failing_for_longer_than_its_lease_keeps_its_partition() {
    let (h, listener) = Harness::new().await; // a lease of 2 s
    h.start_control(listener);
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let first = Arc::new(std::sync::Mutex::new(None));
    let mut db = None;
    for member in ["a", "b"] {
        let handler = Slow {
            member,
            attempts: attempts.clone(),
            first: first.clone(),
            // Five attempts, 0.2 + 0.4 + 0.8 + 1.6 s apart: the fifth, 3 s after the first,
            // succeeds; well past the lease.
            for_: Duration::from_millis(2700),
        };
        db = Some(start_consumer(&h, 5, handler).await.0);
    }
    let db = db.unwrap();
    // Both members share the partitions before anything arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let event = |id: &str, subject: &str, n: i64| {
        json!({"specversion": "1.0", "id": id, "source": "/ledger", "type": "ledger.deposited",
               "subject": subject, "data": {"n": n}})
    };
    h.publish(
        "ledger.events",
        &[event("slow", "acc", 1), event("after", "acc", 2)],
    )
    .await;
    // Past the lease, while the slow one is still retried, fresh events wake the other member,
    // which would take the partition if its holder had let its lease lapse.
    for n in 0..4 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        h.publish(
            "ledger.events",
            &[event(&format!("other{n}"), &format!("k{n}"), 10 + n)],
        )
        .await;
    }
    h.wait("every event", async || seen(&db).await.len() >= 6)
        .await;
    let tried: Vec<(&str, String)> = attempts.lock().unwrap().clone();
    let members_of = |id: &str| {
        let mut m: Vec<&str> = tried
            .iter()
            .filter(|(_, e)| e == id)
            .map(|(m, _)| *m)
            .collect();
        m.dedup();
        m
    };
    assert_eq!(
        members_of("slow").len(),
        1,
        "one member worked on it: {tried:?}"
    );
    assert_eq!(members_of("after"), members_of("slow"), "{tried:?}");
    let order: Vec<String> = seen(&db)
        .await
        .into_iter()
        .filter(|r| r.1 == "acc")
        .map(|r| r.0)
        .collect();
    assert_eq!(order, ["slow", "after"], "in order, each once");
}

/// `GET path` on a service at `address`, as another process of the system.
async fn status_of(h: &Harness, address: &str, path: &str) -> Value {
    h.http
        .get(format!("{address}{path}"))
        .header("x-passport", system_passport(h))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compensation_is_retried_until_done_and_shows_as_stuck_meanwhile() {
    let (h, listener) = Harness::new().await;
    h.start_control(listener);
    let accept = Arc::new(AtomicBool::new(false));
    let (audit_db, auditor) = start_auditor_at(&h, accept.clone()).await;
    // A saga's compensation the handler refuses for good (as a poison event): the auditor
    // gives up on other events after 2 attempts, never on this one.
    let compensation = json!({"specversion": "1.0", "id": "undo", "source": "/ledger",
        "type": "ledger.undo", "subject": "acc0", "sagacompensation": true,
        "data": {"n": 7, "poison": true}});
    h.publish("ledger.events", &[compensation]).await;
    h.wait("the compensation to show as stuck", async || {
        let s = status_of(&h, &auditor, "/status/events").await;
        s["stuck"].as_array().is_some_and(|s| !s.is_empty())
    })
    .await;
    let s = status_of(&h, &auditor, "/status/events").await;
    let stuck = &s["stuck"][0];
    assert_eq!(
        (stuck["id"].as_str(), stuck["type"].as_str()),
        (Some("undo"), Some("ledger.undo"))
    );
    assert_eq!(stuck["error"], "poison");
    assert!(stuck["attempts"].as_u64().unwrap() >= 2, "{stuck}");
    // The cause is fixed: it goes through, is no longer stuck, and was never dead-lettered.
    accept.store(true, Ordering::SeqCst);
    h.wait("the compensation handled", async || {
        !seen(&audit_db).await.is_empty()
    })
    .await;
    h.wait("nothing stuck", async || {
        status_of(&h, &auditor, "/status/events").await["stuck"] == json!([])
    })
    .await;
    let dead = h.control_json("/v1/deadletters/auditor").await;
    assert_eq!(dead["deadLetters"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_the_log_goes_without_its_data() {
    let (h, listener) = Harness::new().await;
    h.start_control(listener);
    // A poison event as large as one publish takes: with the dead-letter attributes, its dead
    // letter is larger than the log takes.
    let frame = json!({"specversion": "1.0", "id": "huge", "source": "/ledger", "type": "ledger.deposited",
                       "subject": "acc0", "data": {"n": 1, "poison": true, "pad": ""}});
    let room = tessera::events::wire::MAX_PUBLISH_BYTES
        - json!({ "events": [frame] }).to_string().len()
        - 8;
    let mut huge = frame.clone();
    huge["data"]["pad"] = json!("x".repeat(room));
    h.publish("ledger.events", &[huge]).await;
    start_auditor(&h, Arc::new(AtomicBool::new(false))).await;
    h.wait("the dead letter", async || {
        let dead = h.control_json("/v1/deadletters/auditor").await;
        !dead["deadLetters"].as_array().unwrap().is_empty()
    })
    .await;
    let dead = h.control_json("/v1/deadletters/auditor").await;
    let dead = &dead["deadLetters"][0]["event"];
    assert_eq!(
        (dead["id"].as_str(), dead["deadletterdatadropped"].as_bool()),
        (Some("huge"), Some(true))
    );
    assert!(dead["data"].is_null());
}

//! The `Bus` contract on NATS JetStream, against a real `nats-server`: what a consumer of the
//! embedded log relies on (order per key, offsets, commits, groups sharing partitions, a dead
//! member's partitions taken over, no duplicate from a retried publish) holds on it too.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use tessera::events::{Batch, Bus, BusError, Event, NatsBus};
use tessera_testkit::nats::Server;

/// A bus with a lease of 2 s (the default 10 s would only make the takeovers slower).
fn bus(server: &Server, service: &str, instance: &str) -> NatsBus {
    NatsBus::new(&format!("{}?lease_ms=2000", server.url), service, instance).unwrap()
}

fn event(key: &str, n: u32) -> Event {
    Event::new("/test", "test.happened", key, serde_json::json!({ "n": n }))
}

/// Fetches, without committing, until `want` different events came or `within` passed; each
/// partition's events in order. (A fetch hands out again what is not committed, as the
/// embedded log starts each fetch from the committed offset: each is counted once.)
async fn drain(
    bus: &NatsBus,
    topic: &str,
    group: &str,
    member: &str,
    want: usize,
    within: Duration,
) -> (Vec<Event>, Vec<(u32, i64)>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut commits = Vec::new();
    let mut seen = HashSet::new();
    while got.len() < want && start.elapsed() < within {
        let batch: Batch = bus
            .fetch(topic, group, member, 100, Duration::from_millis(300))
            .await
            .unwrap();
        for part in batch.parts {
            let mut last = None;
            for (offset, event) in part.events {
                if let Some(prev) = last {
                    assert!(offset > prev, "offsets increase along a partition");
                }
                last = Some(offset);
                if seen.insert((part.partition, offset)) {
                    got.push(event.expect("a CloudEvent"));
                }
            }
            if let Some(last) = last {
                commits.retain(|(p, _)| *p != part.partition);
                commits.push((part.partition, last + 1));
            }
        }
    }
    (got, commits)
}

#[tokio::test]
async fn events_come_in_order_per_key_stamped_with_their_producer_and_committed_once() {
    let server = Server::start();
    let publisher = bus(&server, "order", "order-1");
    let consumer = bus(&server, "audit", "audit-1");
    let events: Vec<Event> = (0..40).map(|n| event(&format!("k{}", n % 5), n)).collect();
    publisher
        .publish("shop.orders", &events[..20])
        .await
        .unwrap();
    let json: Vec<String> = events[20..]
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    let refs: Vec<&str> = json.iter().map(String::as_str).collect();
    publisher.publish_json("shop.orders", &refs).await.unwrap();

    let (got, commits) = drain(
        &consumer,
        "shop.orders",
        "audit",
        "audit-1",
        40,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(got.len(), 40);
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in &got {
        let d = e.delivery.as_ref().unwrap();
        assert_eq!(
            d.producer.as_deref(),
            Some("service:order"),
            "the producer is the publisher's"
        );
        per_key
            .entry(e.key().to_string())
            .or_default()
            .push(e.data["n"].as_u64().unwrap());
    }
    for (key, ns) in per_key {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(
            ns, sorted,
            "events of {key} in the order they were published"
        );
    }
    // Committed: a member of the group starting afresh gets nothing again.
    for (p, offset) in &commits {
        consumer
            .commit("shop.orders", "audit", "audit-1", *p, *offset)
            .await
            .unwrap();
    }
    consumer
        .leave("shop.orders", "audit", "audit-1")
        .await
        .unwrap();
    let again = bus(&server, "audit", "audit-2");
    let (got, _) = drain(
        &again,
        "shop.orders",
        "audit",
        "audit-2",
        1,
        Duration::from_secs(2),
    )
    .await;
    assert!(got.is_empty(), "committed events come back: {got:?}");
    // Another group reads them all, from the start.
    let other = bus(&server, "mail", "mail-1");
    let (got, _) = drain(
        &other,
        "shop.orders",
        "mail",
        "mail-1",
        40,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(got.len(), 40);
}

#[tokio::test]
async fn a_retried_publish_stores_an_event_once() {
    let server = Server::start();
    let publisher = bus(&server, "order", "order-1");
    let e = event("k", 1);
    for _ in 0..3 {
        publisher
            .publish("t", std::slice::from_ref(&e))
            .await
            .unwrap();
    }
    let consumer = bus(&server, "audit", "audit-1");
    let (got, _) = drain(&consumer, "t", "g", "audit-1", 2, Duration::from_secs(3)).await;
    assert_eq!(got.len(), 1, "the same event id is one event");
}

#[tokio::test]
async fn what_a_dead_member_left_comes_to_the_next_before_anything_newer_and_nothing_is_lost() {
    let server = Server::start();
    let publisher = bus(&server, "order", "order-1");
    // One key: one partition, one order.
    let first: Vec<Event> = (0..10).map(|n| event("k", n)).collect();
    publisher.publish("t", &first).await.unwrap();

    // The first member is handed all ten, commits none, and dies without leaving.
    {
        let dead = bus(&server, "audit", "a-1");
        let (got, _) = drain(&dead, "t", "g", "a-1", 10, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 10);
    }
    // Ten newer events of the same key come while nobody holds the partition.
    let newer: Vec<Event> = (10..20).map(|n| event("k", n)).collect();
    publisher.publish("t", &newer).await.unwrap();

    // The next member gets all twenty, the ten left first, in order; committing what it
    // handles (which once acknowledged everything before it) loses none of them.
    let next = bus(&server, "audit", "a-2");
    let start = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < 20 && start.elapsed() < Duration::from_secs(20) {
        let (got, commits) = drain(&next, "t", "g", "a-2", 1, Duration::from_secs(1)).await;
        seen.extend(got.iter().map(|e| e.data["n"].as_u64().unwrap()));
        for (p, offset) in commits {
            next.commit("t", "g", "a-2", p, offset).await.unwrap();
        }
    }
    assert_eq!(
        seen,
        (0..20).collect::<Vec<u64>>(),
        "in order, none lost, none twice"
    );
    // All committed: after the ack wait, nothing comes again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (got, _) = drain(&next, "t", "g", "a-2", 1, Duration::from_secs(1)).await;
    assert!(got.is_empty(), "{} events came again", got.len());
}

#[tokio::test]
async fn members_of_a_group_share_the_partitions_and_no_event_goes_to_two() {
    let server = Server::start();
    let publisher = bus(&server, "order", "order-1");
    let a = bus(&server, "audit", "a");
    let b = bus(&server, "audit", "b");
    // Both join; within a few refreshes each holds two of the four partitions.
    let start = Instant::now();
    let mut held: HashMap<&str, Vec<u32>> = HashMap::new();
    while start.elapsed() < Duration::from_secs(15) {
        a.fetch("t", "g", "a", 10, Duration::from_millis(200))
            .await
            .unwrap();
        b.fetch("t", "g", "b", 10, Duration::from_millis(200))
            .await
            .unwrap();
        held.insert("a", a.renew("t", "g", "a").await.unwrap());
        held.insert("b", b.renew("t", "g", "b").await.unwrap());
        if held["a"].len() == 2 && held["b"].len() == 2 {
            break;
        }
    }
    assert_eq!((held["a"].len(), held["b"].len()), (2, 2), "{held:?}");
    let all: HashSet<u32> = held.values().flatten().copied().collect();
    assert_eq!(all.len(), 4, "no partition held twice: {held:?}");

    let events: Vec<Event> = (0..60).map(|n| event(&format!("k{n}"), n)).collect();
    publisher.publish("t", &events).await.unwrap();
    let (from_a, from_b) = tokio::join!(
        drain(&a, "t", "g", "a", 60, Duration::from_secs(4)),
        drain(&b, "t", "g", "b", 60, Duration::from_secs(4)),
    );
    let ids_a: HashSet<String> = from_a.0.iter().map(|e| e.id.clone()).collect();
    let ids_b: HashSet<String> = from_b.0.iter().map(|e| e.id.clone()).collect();
    assert!(ids_a.is_disjoint(&ids_b), "an event went to both members");
    assert_eq!(ids_a.len() + ids_b.len(), 60);
    assert!(!ids_a.is_empty() && !ids_b.is_empty());

    // One leaves (a stopping consumer does): the other takes its partitions at once.
    a.leave("t", "g", "a").await.unwrap();
    let start = Instant::now();
    loop {
        b.fetch("t", "g", "b", 10, Duration::from_millis(200))
            .await
            .unwrap();
        if b.renew("t", "g", "b").await.unwrap().len() == 4 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "b never took a's partitions"
        );
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_an_unreachable_server_is_unavailable() {
    let server = Server::start();
    let publisher = bus(&server, "order", "order-1");
    for bad in ["", "a..b", "a b", "a.*"] {
        let e = publisher.publish(bad, &[event("k", 1)]).await.unwrap_err();
        assert!(matches!(e, BusError::Refused(_)), "{bad:?}: {e}");
    }
    let e = publisher
        .publish_json("t", &["{\"hello\":1}"])
        .await
        .unwrap_err();
    assert!(
        matches!(e, BusError::Refused(ref m) if m.contains("CloudEvent")),
        "{e}"
    );
    let big = Event::new("/t", "t", "k", "x".repeat(2 * 1024 * 1024));
    let e = publisher.publish("t", &[big]).await.unwrap_err();
    assert!(matches!(e, BusError::TooLarge(_)), "{e}");

    let port = tessera_testkit::free_port();
    let nowhere =
        NatsBus::new(&format!("nats://svc:secret@127.0.0.1:{port}"), "order", "o").unwrap();
    let e = nowhere.publish("t", &[event("k", 1)]).await.unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(!e.to_string().contains("secret"), "{e}");
    assert!(NatsBus::new("nats://h:1?replicas=9", "order", "o").is_err());
}

/// The users of a server where `order` produces `orders`, `audit` and `billing` consume it,
/// and the control plane may do anything.
fn users() -> Vec<tessera::events::nats::User> {
    use tessera::events::nats::{Grants, permissions};
    let service = |name: &str, produces: &[String], consumes: &[String]| {
        (
            name.to_string(),
            format!("{name}-secret"),
            Some(permissions(
                "tessera",
                &Grants {
                    service: name,
                    produces,
                    consumes,
                    partitions: 4,
                },
            )),
        )
    };
    vec![
        service("order", &["orders".into()], &[]),
        service("audit", &[], &["orders".into()]),
        service("billing", &[], &["orders".into()]),
        ("control".to_string(), "control-secret".to_string(), None),
    ]
}

#[tokio::test]
async fn on_a_server_with_users_no_service_can_publish_as_another_or_touch_what_is_not_its_own() {
    let server = Server::start_with_users(Some(&users()));
    let host = &server.url["nats://".len()..];
    let as_user = |user: &str, password: &str| {
        NatsBus::new(
            &format!("nats://{user}:{password}@{host}?lease_ms=2000"),
            user,
            &format!("{user}-1"),
        )
        .unwrap()
    };
    // The control plane declares the system's streams; services may not make any.
    let control = as_user("control", "control-secret");
    control
        .declare(&["orders".into(), "deadletter.audit".into()])
        .await
        .unwrap();
    let order = as_user("order", "order-secret");
    let audit = as_user("audit", "audit-secret");
    let billing = as_user("billing", "billing-secret");

    // What the manifest grants works: order publishes, audit reads it as order's.
    order.publish("orders", &[event("o-1", 1)]).await.unwrap();
    let (got, commits) = drain(
        &audit,
        "orders",
        "audit",
        "audit-1",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].delivery.as_ref().unwrap().producer.as_deref(),
        Some("service:order")
    );
    for (p, offset) in commits {
        audit
            .commit("orders", "audit", "audit-1", p, offset)
            .await
            .unwrap();
    }

    // Audit, skipping the library's own check (no declaration given), publishes to order's
    // topic: under its own name the server refuses the subject; as order, too.
    assert!(
        audit.publish("orders", &[event("o-1", 2)]).await.is_err(),
        "a publish the user may not make went through"
    );
    let forged = serde_json::to_string(&event("o-1", 3)).unwrap();
    assert!(
        audit
            .publish_as("order", "orders", &[&forged], None)
            .await
            .is_err(),
        "a publish as another service went through"
    );
    let mut stored = Vec::new();
    for p in 0..4 {
        stored.extend(control.read("orders", p, 0, 100).await.unwrap());
    }
    assert_eq!(stored.len(), 1, "{stored:?}");

    // Audit cannot take billing's events: not through billing's consumers, nor by taking
    // billing's partitions in the groups bucket.
    let stolen = audit
        .fetch(
            "orders",
            "billing",
            "audit-1",
            10,
            Duration::from_millis(500),
        )
        .await;
    assert!(
        stolen.as_ref().map_or(true, |b| b.is_empty()),
        "read another group's events"
    );
    let (got, _) = drain(
        &billing,
        "orders",
        "billing",
        "billing-1",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(got.len(), 1, "billing still gets its event");
    // Nor make a stream (which could capture another topic's subjects).
    assert!(audit.declare(&["payments".into()]).await.is_err());
    assert!(control.read("payments", 0, 0, 10).await.unwrap().is_empty());
    // Order does not consume `orders`: it cannot read it through a consumer of its own.
    let read = order
        .fetch("orders", "order", "order-1", 10, Duration::from_millis(500))
        .await;
    assert!(
        read.map_or(true, |b| b.is_empty()),
        "read a topic it does not consume"
    );

    // A wrong password, or none, does not connect; and the password is not in the error.
    let e = as_user("order", "guess")
        .publish("orders", &[event("o-1", 4)])
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(!e.to_string().contains("guess"), "{e}");
    let nobody = NatsBus::new(&server.url, "order", "y").unwrap();
    assert!(nobody.publish("orders", &[event("o-1", 5)]).await.is_err());
}

/// NATS killed (SIGKILL) in the middle of checkouts and started again: the orders taken
/// meanwhile wait in their outboxes, consumers fetch again when it is back, and every order
/// settles once, with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkouts_finish_across_a_crash_and_restart_of_nats() {
    use serde_json::json;
    use tessera_testkit::{Options, System};

    let mut server = Server::start();
    let sys = System::start_with(Options {
        checkout: true,
        nats: Some(server.url.clone()),
        ..Options::default()
    })
    .await;
    let (token, _) = sys.new_user().await;
    let item = json!([{"productId": "0190f000-0000-7000-8000-000000000003", "quantity": 1}]);
    let mut orders = Vec::new();
    for _ in 0..5 {
        orders.push(sys.place_order(&token, item.clone()).await);
    }
    server.kill();
    // Orders are still taken: their events wait in the order service's outbox.
    for _ in 0..5 {
        orders.push(sys.place_order(&token, item.clone()).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart();
    for _ in 0..5 {
        orders.push(sys.place_order(&token, item.clone()).await);
    }
    for order in &orders {
        let settled = sys.settled_order(&token, order).await;
        assert_eq!(settled["status"], "CONFIRMED", "{settled}");
    }
    // One notification per order: nothing handled twice.
    let deadline = Instant::now() + Duration::from_secs(20);
    let notes = async || {
        let (_, notes) = sys.get("/api/notifications", Some(&token)).await;
        notes["data"].as_array().unwrap().clone()
    };
    while notes().await.len() < orders.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A moment more, for a second copy to show if one were coming.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let notes = notes().await;
    for order in &orders {
        let n = notes
            .iter()
            .filter(|n| n["orderId"] == order.as_str())
            .count();
        assert_eq!(n, 1, "notifications of {order}");
    }
}

/// A fetch whose answer never reached its consumer (an HTTP consumer behind the control
/// plane whose connection dropped) loses nothing: what was handed out and not committed comes
/// again at the next fetch, as on the embedded log, and a commit acks only what came before it.
#[tokio::test]
async fn what_was_handed_out_and_not_committed_comes_again_at_the_next_fetch() {
    let server = Server::start();
    let publisher = bus(&server, "order", "order-1");
    let consumer = bus(&server, "audit", "audit-1");
    publisher
        .publish("t", &(0..5).map(|n| event("k", n)).collect::<Vec<_>>())
        .await
        .unwrap();
    let offsets = |batch: &tessera::events::Batch| -> Vec<i64> {
        batch
            .parts
            .iter()
            .flat_map(|p| p.events.iter().map(|(o, _)| *o))
            .collect()
    };
    let mut first = Vec::new();
    let start = Instant::now();
    while first.len() < 5 && start.elapsed() < Duration::from_secs(10) {
        first = offsets(
            &consumer
                .fetch("t", "g", "audit-1", 100, Duration::from_millis(300))
                .await
                .unwrap(),
        );
    }
    assert_eq!(first.len(), 5);
    // Lost on the way: the same five again.
    let again = consumer
        .fetch("t", "g", "audit-1", 100, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(offsets(&again), first);
    // Two committed; the other three come again, and nothing else.
    let partition = again.parts[0].partition;
    consumer
        .commit("t", "g", "audit-1", partition, first[2])
        .await
        .unwrap();
    let rest = consumer
        .fetch("t", "g", "audit-1", 100, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(offsets(&rest), first[2..]);
    consumer
        .commit("t", "g", "audit-1", partition, first[4] + 1)
        .await
        .unwrap();
    let none = consumer
        .fetch("t", "g", "audit-1", 100, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(none.is_empty());
}

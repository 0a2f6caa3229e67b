//! Mutual TLS between a system's processes (`system.mtls = "on"`): every process holds a
//! certificate naming its identity, from the system CA the runner made; a checkout crosses
//! every kind of hop over it (gateway → service, service → service, every process → the
//! registry and the log); a process without a certificate from that CA, or with one for
//! another identity, is refused by the control plane and by the services.

use std::time::{Duration, Instant};

use serde_json::json;
use tessera_testkit::{Options, System, capture};

const MOUSE: &str = "0190f000-0000-7000-8000-000000000005";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_crosses_every_hop_over_mutual_tls_and_strangers_are_refused() {
    let sys = System::start_with(Options {
        checkout: true,
        mtls: true,
        ..Options::default()
    })
    .await;
    assert!(sys.control.starts_with("https://"));
    assert!(
        sys.log().contains("\"mutual_tls\":true"),
        "the control plane serves mutual TLS"
    );

    // A whole checkout: the gateway calls order, order calls catalog, payment calls the
    // provider, everyone registers, publishes and consumes, all over mutual TLS.
    let (token, _) = sys.new_user().await;
    let order = sys
        .place_order(&token, json!([{"productId": MOUSE, "quantity": 1}]))
        .await;
    assert_eq!(
        sys.settled_order(&token, &order).await["status"],
        "CONFIRMED"
    );
    // Spans reach the collector over mutual TLS too: the checkout's trace is there, from the
    // gateway to the payment provider.
    sys.wait_until(
        Duration::from_secs(20),
        "a checkout trace in the collector",
        || async {
            let found = sys
                .control_json("/v1/telemetry/traces?service=payment-provider")
                .await;
            found["traces"].as_array().unwrap().iter().any(|t| {
                let services = t["services"].as_array().unwrap();
                services.iter().any(|s| s == "gateway") && services.iter().any(|s| s == "order")
            })
        },
    )
    .await;

    // The control plane asks the order service for its sagas over mutual TLS (as `control`,
    // which every service accepts), for the console: the checkout is there, completed.
    let sagas = sys.control_json("/v1/sagas?status=completed").await;
    let order_sagas = sagas["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "order")
        .unwrap_or_else(|| panic!("{sagas}"));
    assert!(order_sagas.get("error").is_none(), "{sagas}");
    assert!(
        order_sagas["sagas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == order.as_str()),
        "{sagas}"
    );

    // The control plane, as the operators' identity: answers.
    let catalog = sys.registry().await;
    let order_address = catalog.services["order"][0].address.clone();
    let catalog_address = catalog.services["catalog"][0].address.clone();

    // Without a certificate: the handshake fails (plain text, or TLS with no client
    // certificate, alike).
    let plain = reqwest::Client::new()
        .get(sys.control.replace("https://", "http://") + "/v1/services")
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // TLS that trusts the system CA and checks the server's identity, but shows no
    // certificate of its own: the servers refuse it (its handshake, or the first read, fails).
    let roots = tessera_tls::identity::roots(&sys.dir.join("state/tls/system-ca/ca.pem")).unwrap();
    for (url, identity) in [
        (format!("{}/v1/services", sys.control), "control"),
        (
            format!("https://{order_address}/health/ready"),
            "service:order",
        ),
    ] {
        let expected = tessera_tls::Identity::of_principal("shop-test", identity);
        let mut config =
            tessera_tls::rustls::ClientConfig::builder_with_provider(tessera_tls::provider())
                .with_protocol_versions(tessera_tls::VERSIONS)
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
        config.dangerous().set_certificate_verifier(
            tessera_tls::internal::pinned_verifier(roots.clone(), &expected).unwrap(),
        );
        let anonymous = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .build()
            .unwrap();
        let refused = anonymous.get(&url).send().await;
        assert!(
            refused.is_err(),
            "{url} answered without a client certificate: {refused:?}"
        );
    }
    // The same client with a certificate gets in: the refusal above was the missing one.
    let admin = sys.client_as("admin", "service:order");
    assert!(
        admin
            .get(format!("https://{order_address}/health/ready"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );

    // A certificate for one identity with another's credential: the credential is refused.
    let as_catalog = sys.client_as("service:catalog", "control");
    let borrowed = as_catalog
        .get(format!("{}/v1/services", sys.control))
        .header(
            "authorization",
            sys.credential("service:order").authorization(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(borrowed.status(), 401);
    let own = as_catalog
        .get(format!("{}/v1/services", sys.control))
        .header(
            "authorization",
            sys.credential("service:catalog").authorization(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);

    // A service takes calls from the gateway and from the services that declare they call
    // it: catalog may not call order, order may call catalog.
    let refused = sys
        .client_as("service:catalog", "service:order")
        .get(format!("https://{order_address}/health/ready"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "order took a call from catalog: {refused:?}"
    );
    let accepted = sys
        .client_as("service:order", "service:catalog")
        .get(format!("https://{catalog_address}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    let gateway = sys
        .client_as("gateway", "service:order")
        .get(format!("https://{order_address}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(gateway.status(), 200);

    // A client that means to reach order refuses catalog's instance: an address taken over
    // by another service does not get its calls.
    let impostor = sys
        .client_as("gateway", "service:order")
        .get(format!("https://{catalog_address}/health/ready"))
        .send()
        .await;
    assert!(
        impostor.is_err(),
        "catalog's instance passed for order: {impostor:?}"
    );

    // A certificate from another CA, for a real identity: refused.
    let elsewhere = sys.dir.join("elsewhere");
    let other =
        tessera_tls::Authority::load_or_create(&elsewhere.join("ca"), "another CA").unwrap();
    let identity = tessera_tls::Identity::of_principal("shop-test", "gateway");
    let files = other.issue_identity(&elsewhere, &identity).unwrap();
    let stranger = tessera_tls::internal::Internal::load(
        "shop-test",
        identity,
        &files,
        &sys.dir.join("state/tls/system-ca/ca.pem"),
    )
    .unwrap();
    let config = stranger
        .client_config_for(&stranger.identity_of("service:order"))
        .unwrap();
    let refused = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()
        .unwrap()
        .get(format!("https://{order_address}/health/ready"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a certificate from another CA got in: {refused:?}"
    );
    assert!(
        sys.log()
            .contains("mutual TLS: a caller this service does not accept")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_passport_crosses_the_internal_plane_in_clear() {
    for mtls in [false, true] {
        let sys = System::start_with(Options {
            mtls,
            ..Options::default()
        })
        .await;
        let catalog = sys.registry().await;
        let address = &catalog.services["catalog"][0].address;
        let port: u16 = address.rsplit(':').next().unwrap().parse().unwrap();
        let (token, _) = sys.new_user().await;
        let pcap = capture::during("lo", async {
            for _ in 0..5 {
                let (status, _) = sys.get("/api/catalog/products?limit=1", Some(&token)).await;
                assert_eq!(status, 200);
            }
        })
        .await;
        let hop = capture::payloads(&pcap, |p| p.from.1 == port || p.to.1 == port);
        assert!(
            hop.len() > 500,
            "the capture saw the hop ({} bytes)",
            hop.len()
        );
        let clear = capture::contains(&hop, b"x-passport:")
            || capture::contains(&hop, b"/api/catalog/products");
        // Without mutual TLS the passport crosses in clear (so the check can see it); with
        // it, nothing of the request can be read.
        assert_eq!(
            clear, !mtls,
            "mtls = {mtls}: passport or path in clear = {clear}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_certificate_renewed_on_disk_is_served_without_a_restart() {
    let sys = System::start_with(Options {
        mtls: true,
        ..Options::default()
    })
    .await;
    let catalog = sys.registry().await;
    let address = catalog.services["catalog"][0].address.clone();
    let pid = tessera_testkit::pid_of(&catalog, "catalog-1").unwrap();

    // The certificate catalog presents now, as an operator's client sees it.
    let presented = || async {
        let dir = sys.dir.join("probe");
        let ca_dir = sys.dir.join("state/tls/system-ca");
        let ca = tessera_tls::Authority::load_or_create(&ca_dir, "unused").unwrap();
        let me = tessera_tls::Identity::of_principal("shop-test", "admin");
        let files = ca.issue_identity(&dir, &me).unwrap();
        let tls = tessera_tls::internal::Internal::load("shop-test", me, &files, &ca.certificate())
            .unwrap();
        let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
        let name = tls.identity_of("service:catalog").server_name().unwrap();
        let conn = tessera_tls::TlsConnector::from(tls.client_config())
            .connect(name, tcp)
            .await
            .unwrap();
        conn.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let before = presented().await;

    // The runner's renewal, as it does it when a certificate is due: issued again in place.
    let identities = sys.dir.join("state/tls/identities");
    for file in ["service-catalog.pem", "service-catalog.key"] {
        std::fs::remove_file(identities.join(file)).unwrap();
    }
    let ca = tessera_tls::Authority::load_or_create(&sys.dir.join("state/tls/system-ca"), "unused")
        .unwrap();
    ca.issue_identity(
        &identities,
        &tessera_tls::Identity::of_principal("shop-test", "service:catalog"),
    )
    .unwrap();

    let deadline = Instant::now() + Duration::from_secs(15);
    while presented().await == before {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The same process, still serving.
    assert_eq!(
        tessera_testkit::pid_of(&sys.registry().await, "catalog-1"),
        Some(pid)
    );
    let (status, _) = sys.get("/api/catalog/products?limit=1", None).await;
    assert_eq!(status, 200);
}

//! Mutual TLS between a system's processes (`system.mtls = "on"`): every process holds a
//! certificate naming its identity, from the system CA the runner made; a checkout crosses
//! every kind of hop over it (gateway → service, service → service, every process → the
//! registry and the log); a process without a certificate from that CA, or with one for
//! another identity, is refused by the control plane and by the services.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tessera_testkit::{Options, System};

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
    let placed = sys
        .http
        .post(sys.url("/api/orders"))
        .bearer_auth(&token)
        .json(&json!({ "items": [{"productId": MOUSE, "quantity": 1}] }))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 202);
    let placed: Value = placed.json().await.unwrap();
    let order = placed["data"]["orderId"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = sys.get(&format!("/api/orders/{order}"), Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        if body["data"]["status"] == "CONFIRMED" {
            break;
        }
        assert_ne!(body["data"]["status"], "REJECTED", "{body}");
        assert!(Instant::now() < deadline, "not confirmed: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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
    let ca =
        tessera_tls::certificates::read_chain(&sys.dir.join("state/tls/system-ca/ca.pem")).unwrap();
    let no_certificate = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_der(&ca[0]).unwrap())
        .build()
        .unwrap();
    for url in [
        format!("{}/v1/services", sys.control),
        format!("https://{order_address}/health/ready"),
    ] {
        let refused = no_certificate.get(&url).send().await;
        assert!(
            refused.is_err(),
            "{url} answered without a client certificate: {refused:?}"
        );
    }

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

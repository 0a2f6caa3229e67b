//! The service library in-process, over real sockets: a service calls another by name through
//! the registry, and the call carries the caller's passport and the trace.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tessera::identity::{ControlKeys, Principal};
use tessera::passport::{Passport, PassportKeys};
use tessera::{ApiError, Json, Service, ServiceConfig, Settings, TraceContext};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct Running {
    stop: Vec<oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for s in self.stop.drain(..) {
            let _ = s.send(());
        }
    }
}

/// A control plane in this process, and the keys that make its callers' credentials.
struct Control {
    url: String,
    keys: Arc<ControlKeys>,
}

impl Control {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let keys = Arc::new(ControlKeys::from_spec(&ControlKeys::generate_spec(1)).unwrap());
        let config = tessera_control::ControlConfig {
            bus_url: None,
            registry_url: None,
            shared_url: None,
            settle: Duration::ZERO,
            data_dir: std::env::temp_dir().join(format!("tessera-client-{}", uuid::Uuid::new_v4())),
            log: Default::default(),
            keys: keys.clone(),
            policy: Default::default(),
            retention: Default::default(),
            scraping: None,
            principals: Vec::new(),
            passport_keys: None,
            config_base: Default::default(),
            gateways: Vec::new(),
        };
        tokio::spawn(tessera_control::serve(
            listener,
            config,
            std::future::pending(),
        ));
        Self { url, keys }
    }

    /// The token of `who`'s credential: `admin`, or a service's name.
    fn credential(&self, who: &str) -> String {
        let principal = match who {
            "admin" => Principal::Admin,
            service => Principal::Service(service.into()),
        };
        self.keys.issue(&principal).token().to_string()
    }
}

async fn start_service(
    name: &'static str,
    control: &Control,
    keys: &str,
    routes: Router,
    stops: &mut Vec<oneshot::Sender<()>>,
) {
    let credential = control.credential(name);
    let settings = Settings::from_map([
        ("TESSERA_SERVICE", name),
        ("TESSERA_CONTROL_URL", control.url.as_str()),
        ("TESSERA_CREDENTIAL", credential.as_str()),
        ("TESSERA_PASSPORT_KEYS", keys),
        ("TESSERA_SYSTEM", "client-test"),
        ("TESSERA_HEARTBEAT_MS", "200"),
        ("TESSERA_TTL_MS", "1000"),
    ]);
    let config = ServiceConfig::from_settings(&settings, name).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    stops.push(tx);
    tokio::spawn(async move {
        Service::new(name)
            .serve(
                config,
                settings,
                listener,
                async {
                    let _ = rx.await;
                },
                |_ctx| async move { Ok(routes) },
            )
            .await
            .unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_carry_the_passport_and_the_trace() {
    let control = Control::start().await;
    let keys = PassportKeys::generate_spec();
    let mut stops = Vec::new();

    // "backend" reports who called it and in which trace.
    let backend = Router::new().route(
        "/whoami",
        get(|p: Passport, axum::Extension(t): axum::Extension<TraceContext>| async move {
            Json(serde_json::json!({ "sub": p.sub, "trace": t.trace_id_hex(), "roles": p.roles }))
        }),
    );
    start_service("backend", &control, &keys, backend, &mut stops).await;
    start_service("backend", &control, &keys, Router::new().route("/whoami", get(|p: Passport| async move {
        Json(serde_json::json!({ "sub": p.sub, "trace": p.tid, "roles": p.roles, "second": true }))
    })), &mut stops).await;

    let _running = Running { stop: stops };

    // "front" calls backend by name, inside a request and from a background task.
    let front_credential = control.credential("front");
    let settings = Settings::from_map([
        ("TESSERA_SERVICE", "front"),
        ("TESSERA_CONTROL_URL", control.url.as_str()),
        ("TESSERA_CREDENTIAL", front_credential.as_str()),
        ("TESSERA_PASSPORT_KEYS", keys.as_str()),
        ("TESSERA_SYSTEM", "client-test"),
    ]);
    let config = ServiceConfig::from_settings(&settings, "front").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = listener.local_addr().unwrap();
    let (front_stop, front_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        Service::new("front")
            .serve(
                config,
                settings,
                listener,
                async {
                    let _ = front_rx.await;
                },
                |ctx| async move {
                    let client = ctx.client.clone();
                    let background = ctx.client.clone();
                    Ok(Router::new()
                        .route(
                            "/relay",
                            get(move || {
                                let client = client.clone();
                                async move {
                                    let answer: serde_json::Value =
                                        client.get("backend", "/whoami").await?;
                                    Ok::<_, ApiError>(Json(answer))
                                }
                            }),
                        )
                        .route(
                            "/background",
                            get(move || {
                                let client = background.clone();
                                async move {
                                    // Outside the request's task: the service speaks for itself.
                                    let answer = tokio::spawn(async move {
                                        client.get::<serde_json::Value>("backend", "/whoami").await
                                    })
                                    .await
                                    .unwrap()?;
                                    Ok::<_, ApiError>(Json(answer))
                                }
                            }),
                        )
                        .route(
                            "/missing",
                            get(move || async move {
                                Err::<Json<()>, _>(ApiError::not_found("nothing"))
                            }),
                        ))
                },
            )
            .await
            .unwrap();
    });

    let http = reqwest::Client::new();
    // Wait until both backends and the front are registered and discovered.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let catalog: tessera::registry::Catalog = http
            .get(format!("{}/v1/services", control.url))
            .header(
                "authorization",
                format!("Bearer {}", control.credential("admin")),
            )
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if catalog
            .services
            .get("backend")
            .is_some_and(|b| b.len() == 2)
            && catalog.services.contains_key("front")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "services did not register: {catalog:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // discovery long-poll wakes

    let signer = PassportKeys::from_spec(&keys, "client-test").unwrap();
    let trace = TraceContext::new_root();
    let passport = signer.mint("test", "user-42", &["user".into()], None, &trace);
    let mut seconds = 0;
    for _ in 0..40 {
        let resp = http
            .get(format!("http://{front_addr}/relay"))
            .header("x-passport", &passport)
            .header("traceparent", trace.header())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(
            body["sub"], "user-42",
            "the caller's identity travels: {body}"
        );
        assert_eq!(
            body["trace"],
            trace.trace_id_hex(),
            "the trace travels: {body}"
        );
        if body["second"] == true {
            seconds += 1;
        }
    }
    assert!(
        (5..=35).contains(&seconds),
        "both instances serve: {seconds} of 40 on the second"
    );

    let resp = http
        .get(format!("http://{front_addr}/background"))
        .header("x-passport", &passport)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["sub"], "service:front", "{body}");
    assert_eq!(body["roles"], serde_json::json!(["system"]));

    let resp = http
        .get(format!("http://{front_addr}/missing"))
        .header("x-passport", &passport)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let _ = front_stop.send(());
}

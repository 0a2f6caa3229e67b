//! Mail, for real: the shop's order notifications and Invest's alerts go out by SMTP
//! (`tessera::mail`, lettre) to a server nobody on the project wrote (aiosmtpd from PyPI,
//! STARTTLS required, AUTH with a user and password), one message per cause, also across a
//! `kill -9` of the sending service.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use tessera_testkit::{Options, System, free_port, pid_of, signal};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const MOUSE: &str = "0190f000-0000-7000-8000-000000000005";

/// An SMTP server on a port of its own, and the file it writes each message to.
struct Sink {
    child: Child,
    out: PathBuf,
    ca: PathBuf,
    port: u16,
    dir: PathBuf,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "openssl {args:?}");
}

impl Sink {
    fn start() -> Sink {
        let dir = std::env::temp_dir().join(format!("tessera-smtp-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        // A CA of the test's own, and the server's certificate from it, for 127.0.0.1.
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=test mail CA",
            ],
        );
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
        let port = free_port();
        let out = dir.join("mail.jsonl");
        let mut child = Command::new("python3")
            .arg(format!("{FIXTURES}/smtp_sink.py"))
            .args([
                &port.to_string(),
                out.to_str().unwrap(),
                dir.join("server.pem").to_str().unwrap(),
                dir.join("server.key").to_str().unwrap(),
                "mailer",
                "mail-password",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs (pip install aiosmtpd)");
        let mut ready = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "the SMTP server started");
        Sink {
            child,
            out,
            ca: dir.join("ca.pem"),
            port,
            dir,
        }
    }

    /// What a service needs to send through it.
    fn env(&self, service: &'static str) -> Vec<(&'static str, &'static str, String)> {
        vec![
            (service, "MAIL_SMTP_HOST", "127.0.0.1".into()),
            (service, "MAIL_SMTP_PORT", self.port.to_string()),
            (service, "MAIL_SMTP_SECURITY", "starttls".into()),
            (service, "MAIL_SMTP_USER", "mailer".into()),
            (service, "MAIL_SMTP_PASSWORD", "mail-password".into()),
            (service, "MAIL_SMTP_CA", self.ca.display().to_string()),
            (service, "MAIL_FROM", "Tessera <mail@tessera.test>".into()),
        ]
    }

    /// Every message received so far.
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The messages by subject: (recipients, distinct message ids, copies).
fn by_subject(messages: &[Value]) -> BTreeMap<String, (BTreeSet<String>, BTreeSet<String>, usize)> {
    let mut out: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>, usize)> = BTreeMap::new();
    for m in messages {
        let entry = out
            .entry(m["subject"].as_str().unwrap().to_string())
            .or_default();
        for to in m["to"].as_array().unwrap() {
            entry.0.insert(to.as_str().unwrap().to_string());
        }
        entry
            .1
            .insert(m["message_id"].as_str().unwrap().to_string());
        entry.2 += 1;
    }
    out
}

/// A new user: their token, e-mail address and id.
async fn person(sys: &System) -> (String, String, String) {
    let (token, _) = sys.new_user().await;
    let (_, me) = sys.get("/api/auth/me", Some(&token)).await;
    let field = |name: &str| me["data"][name].as_str().unwrap().to_string();
    (token, field("email"), field("id"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_order_is_one_email_to_its_customer_across_a_kill_of_the_sender() {
    let sink = Sink::start();
    // With the system's mutual TLS on (as in a cluster): the sender asks auth for addresses.
    let sys = System::start_with(Options {
        checkout: true,
        mtls: true,
        checkout_env: sink.env("notification"),
        ..Options::default()
    })
    .await;
    let mut customers = Vec::new();
    for _ in 0..3 {
        let (token, email, _) = person(&sys).await;
        customers.push((token, email));
    }
    let mut orders = Vec::new();
    for i in 0..24 {
        let (token, email) = &customers[i % 3];
        orders.push((
            sys.place_order(token, json!([{ "productId": MOUSE, "quantity": 1 }]))
                .await,
            email.clone(),
            token.clone(),
        ));
        if i == 12 {
            // The sender dies mid-stream; the supervisor brings it back.
            let catalog = sys.registry().await;
            let pid = pid_of(&catalog, "notification-1").expect("notification's pid");
            signal(pid, libc::SIGKILL);
        }
    }
    let mut confirmed = BTreeMap::new();
    for (id, email, token) in &orders {
        let order = sys.settled_order(token, id).await;
        if order["status"] == "CONFIRMED" {
            confirmed.insert(format!("Your order {id} is confirmed"), email.clone());
        }
    }
    assert!(confirmed.len() >= 20, "{} confirmed", confirmed.len());
    sys.wait_until(
        Duration::from_secs(60),
        "a message per confirmed order",
        || async {
            let got = by_subject(&sink.received());
            confirmed.keys().all(|s| got.contains_key(s))
        },
    )
    .await;
    let got = by_subject(&sink.received());
    for (subject, email) in &confirmed {
        let (to, ids, copies) = &got[subject];
        assert_eq!(to, &BTreeSet::from([email.clone()]), "{subject}");
        assert_eq!(
            ids.len(),
            1,
            "{subject}: one message, one Message-ID ({copies} copies)"
        );
    }
    // At least once by SMTP: a copy resent after the kill carries the same Message-ID; there
    // can be at most one such, from the moment of the kill.
    let copies: usize = got.values().map(|(_, _, n)| n).sum();
    let messages = got.values().filter(|(_, ids, _)| !ids.is_empty()).count();
    assert!(
        copies <= messages + 1,
        "{copies} copies of {messages} messages"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_alert_is_one_email_to_its_member_across_a_kill_of_the_sender() {
    let sink = Sink::start();
    // A slow server (100 ms an answer): the holders' messages go out over three seconds, and
    // the sender dies in the middle.
    std::fs::write(sink.dir.join("delay"), "0.1").unwrap();
    let sys = System::start_with(Options {
        invest: true,
        checkout_env: sink.env("alerts"),
        ..Options::default()
    })
    .await;
    const HOLDERS: usize = 30;
    let mut holders = BTreeSet::new();
    for _ in 0..HOLDERS {
        let (token, email, _) = person(&sys).await;
        holders.insert(email);
        sys.buy(&token, "UTI03", 1).await;
    }
    let admin = sys.admin().await;
    sys.wait_for_audience(&admin, "sector=Utilities", HOLDERS)
        .await;
    sys.publish_news(
        &admin,
        json!({ "sector": "Utilities", "headline": "Grid upgrade", "sentiment": 0.2 }),
    )
    .await;
    let subject = "News for Utilities, which you hold";
    let catalog = sys.registry().await;
    let pid = pid_of(&catalog, "alerts-1").expect("alerts' pid");
    sys.wait_until(Duration::from_secs(30), "the first e-mail", || async {
        !sink.received().is_empty()
    })
    .await;
    signal(pid, libc::SIGKILL);
    let before = sink.received().len();
    assert!(before < HOLDERS, "killed mid-stream: {before} sent");
    sys.wait_until(Duration::from_secs(90), "an e-mail per holder", || async {
        by_subject(&sink.received())
            .get(subject)
            .is_some_and(|(to, _, _)| to.len() == HOLDERS)
    })
    .await;
    let got = by_subject(&sink.received());
    let (to, ids, copies) = &got[subject];
    assert_eq!(to, &holders);
    assert_eq!(ids.len(), HOLDERS, "one Message-ID per holder");
    // At least once by SMTP: the message on the wire when the sender died may go twice, with
    // the same Message-ID; with two replicas sending, one each.
    assert!(*copies <= HOLDERS + 2, "{copies} copies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_is_dead_until_an_admin_requeues_it() {
    let sink = Sink::start();
    let sys = System::start_with(Options {
        checkout: true,
        checkout_env: sink.env("notification"),
        ..Options::default()
    })
    .await;
    let (token, email, user) = person(&sys).await;
    // The server refuses this mailbox for good (550): no retries, the message is dead at once.
    std::fs::write(sink.dir.join("refuse"), format!("{email}\n")).unwrap();
    let order = sys
        .place_order(&token, json!([{ "productId": MOUSE, "quantity": 1 }]))
        .await;
    assert_eq!(
        sys.settled_order(&token, &order).await["status"],
        "CONFIRMED"
    );
    let key = format!("order_confirmed:{order}");
    sys.wait_until(Duration::from_secs(30), "the message to die", || async {
        let mail = sys.control_json("/v1/mail").await;
        mail["services"][0]["queue"]["dead"] == 1
    })
    .await;
    let mail = sys.control_json("/v1/mail").await;
    let service = &mail["services"][0];
    assert_eq!(service["service"], "notification", "{mail}");
    let dead = &service["queue"]["dead_messages"][0];
    assert_eq!(dead["key"], key.as_str(), "{dead}");
    assert_eq!(dead["to_user"], user.as_str(), "{dead}");
    assert_eq!(
        dead["attempts"], 1,
        "a permanent refusal is not retried: {dead}"
    );
    assert!(
        dead["error"].as_str().unwrap().contains("550"),
        "the server's answer is kept: {dead}"
    );
    assert!(sink.received().is_empty());
    // The CLI says the same, for a person.
    let (ok, out, err) = sys.cli_async(&["mail"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("notification: 0 waiting,") && out.contains(&format!("dead {key} to {user}")),
        "{out}"
    );
    // And the console's Mail page, in a real browser.
    let console = format!("{}/console/", sys.control);
    let credential = sys.credential("admin").token().to_string();
    let page = {
        let url = format!("{console}#/mail?credential={credential}");
        tokio::task::spawn_blocking(move || {
            tessera_testkit::browser::browse(
                &url,
                &tessera_testkit::browser::artifacts("mail-screenshots").join("mail.png"),
            )
        })
        .await
        .unwrap()
    };
    assert!(page.contains(&key) && page.contains("dead 1"), "{page}");
    assert!(page.contains("Send the dead messages again"), "{page}");
    // The service's own routes: for the platform's operators, and acting is the admin's
    // through the control plane only.
    let notification = sys.instance_url("notification").await;
    let ask = |method: reqwest::Method, path: &str, passport: String| {
        sys.http
            .request(method, format!("{notification}{path}"))
            .header("x-passport", passport)
            .send()
    };
    for passport in [
        sys.user_passport(&user, &["user"]),
        sys.user_passport(&user, &["admin"]), // an end user who is the shop's admin
    ] {
        let answer = ask(reqwest::Method::GET, "/status/mail", passport)
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 403);
    }
    let answer = ask(reqwest::Method::GET, "/status/mail", sys.system_passport())
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let answer = ask(
        reqwest::Method::POST,
        "/status/mail/requeue",
        sys.system_passport(),
    )
    .await
    .unwrap();
    assert_eq!(
        answer.status().as_u16(),
        403,
        "another service may not requeue"
    );
    // Requeueing is the admin's: a supervisor may look but not act.
    let supervisor = sys
        .http
        .post(format!("{}/v1/mail/notification/requeue", sys.control))
        .header(
            "authorization",
            sys.credential("supervisor").authorization(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(supervisor.status().as_u16(), 403);
    // The mailbox is fixed; the admin sends the dead message again, and it goes out once.
    std::fs::remove_file(sink.dir.join("refuse")).unwrap();
    let (ok, out, err) = sys.cli_async(&["mail", "requeue", "notification"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("notification: 1 dead messages queued again"),
        "{out}"
    );
    let subject = format!("Your order {order} is confirmed");
    sys.wait_until(Duration::from_secs(30), "the requeued message", || async {
        by_subject(&sink.received()).contains_key(&subject)
    })
    .await;
    let got = by_subject(&sink.received());
    assert_eq!(got[&subject].0, BTreeSet::from([email]));
    assert_eq!(got[&subject].2, 1, "sent once");
    let mail = sys.control_json("/v1/mail").await;
    assert_eq!(mail["services"][0]["queue"]["dead"], 0, "{mail}");
    assert!(
        sys.log()
            .lines()
            .any(|l| l.contains("dead mail requeued") && l.contains("admin")),
        "the action is audited"
    );
}

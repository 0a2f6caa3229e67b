//! Mail to people (an order's outcome, an alert), sent asynchronously through a queue, as seeds
//! 002 and 004 did: a service writes a message into its own database in the transaction that
//! decides it ([`queue`]), keyed by its cause, so a cause met twice queues one message; a
//! sender task ([`Sender`]) takes due messages, resolves each recipient's address, and sends
//! it by SMTP through lettre, with retries and backoff; a message that keeps failing (or that
//! the server refuses for good) is `dead`, kept with its error for an operator.
//!
//! Delivery is at least once: SMTP has no idempotency, and a sender killed between the
//! server's acceptance and the row's update sends the message again when it comes back. The
//! message's `Message-ID` is its key, the same every time, so a receiver (a mail client, a
//! list) sees one message.

use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tessera_store::{Db, DbError, Migration, Tx, query, query_as};

/// The mail queue's table, added to every service database.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1_000_001_001,
    description: "tessera mail",
    sqlite: include_str!("../migrations/0001_mail.sql"),
    postgres: Some(include_str!("../migrations/postgres/0001_mail.sql")),
}];

/// A message for a user.
#[derive(Clone, Debug)]
pub struct Mail {
    /// The cause's key (`order_confirmed:<order id>`): one message per key.
    pub key: String,
    /// The user it is for; their address is asked for when it is sent.
    pub to_user: String,
    pub subject: String,
    pub body: String,
}

/// Queues `mail` in `tx`: sent once the transaction commits; nothing if its key was queued.
pub async fn queue(tx: &mut Tx, mail: &Mail) -> Result<(), DbError> {
    let now = now_ms();
    query(
        "INSERT INTO tessera_mail (id, to_user, subject, body, state, attempts, next_at, claimed_until, created)
         VALUES ($1, $2, $3, $4, 'pending', 0, $5, 0, $5) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&mail.key)
    .bind(&mail.to_user)
    .bind(&mail.subject)
    .bind(&mail.body)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What the queue holds, for an operator (`GET /status/mail`).
#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub pending: i64,
    pub sent: i64,
    pub dead: i64,
    /// The newest dead messages (at most 50), with why they died; not their bodies.
    pub dead_messages: Vec<DeadMail>,
}

/// A message given up on.
#[derive(Debug, serde::Serialize)]
pub struct DeadMail {
    pub key: String,
    pub to_user: String,
    pub subject: String,
    pub attempts: i64,
    pub error: Option<String>,
    /// Unix ms.
    pub created: i64,
}

/// The queue's counts by state and its newest dead messages.
pub async fn status(db: &Db) -> Result<Status, DbError> {
    let counts: Vec<(String, i64)> =
        query_as("SELECT state, COUNT(*) FROM tessera_mail GROUP BY state")
            .fetch_all(db.pool())
            .await?;
    let count = |state: &str| {
        counts
            .iter()
            .find(|(s, _)| s == state)
            .map_or(0, |(_, n)| *n)
    };
    let dead: Vec<(String, String, String, i64, Option<String>, i64)> = query_as(
        "SELECT id, to_user, subject, attempts, last_error, created FROM tessera_mail
         WHERE state = 'dead' ORDER BY created DESC LIMIT 50",
    )
    .fetch_all(db.pool())
    .await?;
    let dead_messages = dead
        .into_iter()
        .map(
            |(key, to_user, subject, attempts, error, created)| DeadMail {
                key,
                to_user,
                subject,
                attempts,
                error,
                created,
            },
        )
        .collect();
    Ok(Status {
        pending: count("pending"),
        sent: count("sent"),
        dead: count("dead"),
        dead_messages,
    })
}

/// Puts every dead message back in the queue, due now with its attempts counted afresh (once
/// their cause, a wrong address or a server's setting, is fixed): how many.
pub async fn requeue(db: &Db) -> Result<u64, DbError> {
    let mut tx = db.write_tx().await?;
    let done = query(
        "UPDATE tessera_mail SET state = 'pending', attempts = 0, next_at = $1, claimed_until = 0
         WHERE state = 'dead'",
    )
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

/// How long a sent message's row is kept: while it is, its cause met again queues nothing.
pub const KEEP_SENT: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a sender holds a message it took.
const CLAIM: Duration = Duration::from_secs(60);

/// How long a message may take to send (the address, then SMTP), well under [`CLAIM`].
const SEND_WITHIN: Duration = Duration::from_secs(40);

/// The wait after the `attempts`th failure: 2 s, 4 s, … 128 s after the seventh (about four
/// minutes in all before the eighth, the last).
fn backoff(attempts: i64) -> i64 {
    1000i64 << attempts.clamp(1, 8)
}

/// How the SMTP server is reached.
#[derive(Clone, Debug, PartialEq)]
pub struct Smtp {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// User and password, when the server asks for them.
    pub credentials: Option<(String, String)>,
    /// A PEM file of the CA the server's certificate comes from, when not a public one.
    pub ca: Option<std::path::PathBuf>,
    /// The sender's address: `Shop <shop@example.com>`.
    pub from: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// Plain SMTP (a relay on the same host).
    None,
    /// STARTTLS, required: the connection upgrades or nothing is sent.
    StartTls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// It may go later: the server busy or unreachable, the address not known yet.
    #[error("{0}")]
    Retry(String),
    /// It never will: the server refused it for good, an address that cannot be one.
    #[error("{0}")]
    Permanent(String),
}

/// Where a user's address comes from (the system's auth service).
pub type Resolve = Arc<
    dyn Fn(
            String,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, SendError>> + Send>>
        + Send
        + Sync,
>;

/// Sends what is due, until the process ends.
pub struct Sender {
    db: Db,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    resolve: Resolve,
    /// Attempts before a message is dead.
    pub max_attempts: i64,
}

impl Sender {
    pub fn new(db: Db, smtp: &Smtp, resolve: Resolve) -> Result<Self, String> {
        let from: Mailbox = smtp
            .from
            .parse()
            .map_err(|e| format!("the sender's address {:?}: {e}", smtp.from))?;
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host).port(smtp.port);
        if smtp.security != Security::None {
            let mut tls = TlsParameters::builder(smtp.host.clone());
            if let Some(ca) = &smtp.ca {
                let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
                let certificate =
                    Certificate::from_pem(&pem).map_err(|e| format!("{}: {e}", ca.display()))?;
                tls = tls.add_root_certificate(certificate);
            }
            let tls = tls.build_rustls().map_err(|e| format!("TLS: {e}"))?;
            builder = builder.tls(match smtp.security {
                Security::StartTls => Tls::Required(tls),
                _ => Tls::Wrapper(tls),
            });
        }
        if let Some((user, password)) = &smtp.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(Self {
            db,
            transport: builder.timeout(Some(Duration::from_secs(20))).build(),
            from,
            resolve,
            max_attempts: 8,
        })
    }

    /// Runs the sender: every 200 ms, the due messages, claimed for a minute each so that
    /// two replicas never send one at once. An instance that comes back (its name is the
    /// same across restarts) takes its claims back at once: a message it was sending when it
    /// died goes out again now, not a minute later.
    pub fn start(self, name: String) {
        tokio::spawn(async move {
            if let Err(e) = query("UPDATE tessera_mail SET claimed_until = 0 WHERE claimed_by = $1 AND state = 'pending'")
                .bind(&name)
                .execute(self.db.pool())
                .await
            {
                tracing::warn!(error = %e, "mail: cannot take this instance's claims back");
            }
            let mut pruned = tokio::time::Instant::now();
            loop {
                if pruned.elapsed() > Duration::from_secs(600) {
                    pruned = tokio::time::Instant::now();
                    if let Err(e) = self.prune().await {
                        tracing::warn!(error = %e, "mail: cannot remove old sent messages");
                    }
                }
                match self.round(&name).await {
                    Ok(0) => tokio::time::sleep(Duration::from_millis(200)).await,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "mail: cannot read the queue");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }

    /// Removes the sent messages older than [`KEEP_SENT`].
    async fn prune(&self) -> Result<(), DbError> {
        let mut tx = self.db.write_tx().await?;
        query("DELETE FROM tessera_mail WHERE state = 'sent' AND sent_at < $1")
            .bind(now_ms() - KEEP_SENT.as_millis() as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// Claims and sends up to 20 due messages: how many it took.
    async fn round(&self, name: &str) -> Result<usize, DbError> {
        let now = now_ms();
        let due: Vec<(String, String, String, String, i64)> = query_as(
            "SELECT id, to_user, subject, body, attempts FROM tessera_mail
             WHERE state = 'pending' AND next_at <= $1 AND claimed_until <= $1 ORDER BY next_at LIMIT 20",
        )
        .bind(now)
        .fetch_all(self.db.pool())
        .await?;
        let mut taken = 0;
        for (id, to_user, subject, body, attempts) in due {
            // Claimed by this sender only if nobody claimed it meanwhile, nor tried it since it
            // was read (its attempts the same, and still due), for a minute from now (not from
            // the round's start: the messages before it took their time).
            let now = now_ms();
            let mut tx = self.db.write_tx().await?;
            let claimed = query(
                "UPDATE tessera_mail SET claimed_until = $1, claimed_by = $4
                 WHERE id = $2 AND state = 'pending' AND claimed_until <= $3 AND next_at <= $3 AND attempts = $5",
            )
            .bind(now + CLAIM.as_millis() as i64)
            .bind(&id)
            .bind(now)
            .bind(name)
            .bind(attempts)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            if claimed.rows_affected() == 0 {
                continue;
            }
            taken += 1;
            // Done well within the claim, so that no other sender takes the message while
            // this one may still send it.
            let outcome =
                tokio::time::timeout(SEND_WITHIN, self.send(&id, &to_user, &subject, &body))
                    .await
                    .unwrap_or_else(|_| {
                        Err(SendError::Retry(format!(
                            "not sent within {} s",
                            SEND_WITHIN.as_secs()
                        )))
                    });
            // The outcome is written only under this sender's claim.
            let attempts = attempts + 1;
            let dead = outcome.as_ref().is_err_and(|e| {
                matches!(e, SendError::Permanent(_)) || attempts >= self.max_attempts
            });
            let mut tx = self.db.write_tx().await?;
            let written = match &outcome {
                Ok(()) => {
                    query("UPDATE tessera_mail SET state = 'sent', sent_at = $1, attempts = attempts + 1, claimed_until = 0
                           WHERE id = $2 AND state = 'pending' AND claimed_by = $3")
                        .bind(now_ms())
                        .bind(&id)
                        .bind(name)
                        .execute(&mut *tx)
                        .await?
                }
                Err(e) => {
                    query(
                        "UPDATE tessera_mail SET state = $1, attempts = $2, next_at = $3, claimed_until = 0, last_error = $4
                         WHERE id = $5 AND state = 'pending' AND claimed_by = $6",
                    )
                    .bind(if dead { "dead" } else { "pending" })
                    .bind(attempts)
                    .bind(now_ms() + backoff(attempts))
                    .bind(e.to_string())
                    .bind(&id)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?
                }
            };
            tx.commit().await?;
            if written.rows_affected() == 0 {
                tracing::warn!(mail = %id, "mail: another sender took this message meanwhile; its outcome stands");
                continue;
            }
            match outcome {
                Ok(()) => {
                    metrics::counter!("tessera_mail_sent_total").increment(1);
                    tracing::info!(mail = %id, "mail sent");
                }
                Err(e) => {
                    metrics::counter!("tessera_mail_failed_total", "outcome" => if dead { "dead" } else { "retry" }).increment(1);
                    tracing::warn!(mail = %id, attempts, dead, error = %e, "mail not sent");
                }
            }
        }
        Ok(taken)
    }

    async fn send(
        &self,
        id: &str,
        to_user: &str,
        subject: &str,
        body: &str,
    ) -> Result<(), SendError> {
        let address = (self.resolve)(to_user.to_string()).await?;
        let to: Mailbox = address.parse().map_err(|e| {
            SendError::Permanent(format!("the address of {to_user} is not one: {e}"))
        })?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(message_id(id, &self.from)))
            .body(body.to_string())
            .map_err(|e| SendError::Permanent(format!("cannot build the message: {e}")))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
            Err(e) => Err(SendError::Retry(e.to_string())),
        }
    }
}

/// The `Message-ID` of the message whose key is `key`: the same for every copy. Its left part
/// is the key in hex (a key may hold characters a Message-ID may not: `:`), its right the
/// sender's domain, as RFC 5322 wants.
fn message_id(key: &str, from: &Mailbox) -> String {
    let mut id = String::with_capacity(key.len() * 2 + 32);
    id.push('<');
    for b in key.bytes() {
        id.push_str(&format!("{b:02x}"));
    }
    id.push('@');
    id.push_str(from.email.domain());
    id.push('>');
    id
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_id_is_the_key_in_hex_at_the_senders_domain() {
        let from: Mailbox = "Shop <shop@mail.example.com>".parse().unwrap();
        assert_eq!(
            message_id("order:1", &from),
            "<6f726465723a31@mail.example.com>"
        );
        assert_ne!(message_id("a:b", &from), message_id("a.b", &from));
    }

    #[test]
    fn retries_wait_longer_each_time_and_about_four_minutes_in_all() {
        let waits: Vec<i64> = (1..8).map(backoff).collect();
        assert_eq!(
            waits,
            [2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000]
        );
        assert_eq!(waits.iter().sum::<i64>(), 254_000);
    }
}

//! Messages to customers: what one says about an order's outcome, and how it leaves.
//!
//! Sending goes through the [`Sender`] seam. The default, [`RecordingSender`], records the
//! message in the service's database, in the same transaction as the consumer's inbox record,
//! which is what makes it exactly once. (A sender that talks to an SMTP server is at least
//! once: it would send first and record after.)

use serde::Deserialize;
use tessera::events::{BoxFuture, Event, HandlerError, Tx};
use tessera::unix_now;

/// A message for a customer.
#[derive(Debug, Clone)]
pub struct Message {
    pub order_id: String,
    pub user_id: String,
    pub kind: &'static str,
    pub subject: String,
    pub body: String,
}

/// How messages leave.
pub trait Sender: Send + Sync + 'static {
    fn send<'a>(
        &'a self,
        tx: &'a mut Tx,
        message: &'a Message,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// Records messages in the database (the outbox of a mail system, for the demo).
pub struct RecordingSender;

impl Sender for RecordingSender {
    fn send<'a>(
        &'a self,
        tx: &'a mut Tx,
        m: &'a Message,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            tessera::store::query(
                "INSERT INTO notifications (id, order_id, user_id, kind, channel, subject, body, created)
                 VALUES ($1, $2, $3, $4, 'recorded', $5, $6, $7) ON CONFLICT (order_id, kind) DO NOTHING",
            )
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(&m.order_id)
            .bind(&m.user_id)
            .bind(m.kind)
            .bind(&m.subject)
            .bind(&m.body)
            .bind(unix_now() as i64)
            .execute(&mut **tx)
            .await?;
            Ok(())
        })
    }
}

/// Records the message, and queues it as e-mail to the customer in the same transaction
/// (`tessera::mail`: one message per order and outcome, sent by SMTP after commit).
pub struct MailingSender;

impl Sender for MailingSender {
    fn send<'a>(
        &'a self,
        tx: &'a mut Tx,
        m: &'a Message,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            RecordingSender.send(tx, m).await?;
            let mail = tessera::mail::Mail {
                key: format!("{}:{}", m.kind, m.order_id),
                to_user: m.user_id.clone(),
                subject: m.subject.clone(),
                body: m.body.clone(),
            };
            tessera::mail::queue(tx, &mail).await?;
            Ok(())
        })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Outcome {
    order_id: String,
    user_id: String,
    #[serde(default)]
    total: i64,
    #[serde(default)]
    currency: String,
    #[serde(default)]
    reason: Option<String>,
}

impl Message {
    /// The message an order event asks for: one for a confirmed or rejected order, none for
    /// the others.
    pub fn about(event: &Event) -> Result<Option<Message>, HandlerError> {
        let (kind, confirmed) = match event.ty.as_str() {
            "shop.order.confirmed" => ("order_confirmed", true),
            "shop.order.rejected" => ("order_rejected", false),
            _ => return Ok(None), // other order events are not for customers
        };
        let o: Outcome = event.data_as()?;
        let amount = format!("{}.{:02} {}", o.total / 100, o.total % 100, o.currency);
        let message = if confirmed {
            Message {
                subject: format!("Your order {} is confirmed", o.order_id),
                body: format!("We have your payment of {amount} and your items are on their way."),
                order_id: o.order_id,
                user_id: o.user_id,
                kind,
            }
        } else {
            let reason = o
                .reason
                .unwrap_or_else(|| "it could not be completed".into());
            Message {
                subject: format!("Your order {} could not be placed", o.order_id),
                body: format!("We are sorry: {reason}. You have not been charged."),
                order_id: o.order_id,
                user_id: o.user_id,
                kind,
            }
        };
        Ok(Some(message))
    }
}

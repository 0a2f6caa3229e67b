//! The fan-outs: a news item to every holder of its sector, a signal change to every holder
//! and follower of its ticker. Each is one `INSERT … SELECT` in the consumer's transaction;
//! an alert's id is `<kind>:<cause>:<member>`, so meeting a cause again adds nothing.

use serde::Deserialize;
use tessera::events::{BoxFuture, Event, Handler, HandlerError, Tx};
use tessera::store::query;

/// Queues, as e-mail (`tessera::mail`), the alerts one cause made: in the fan-out's
/// transaction, one statement, one message per alert (its key the alert's id).
async fn mail_alerts(tx: &mut Tx, kind: &str, source: &str) -> Result<(), HandlerError> {
    tessera::store::query(
        "INSERT INTO tessera_mail (id, to_user, subject, body, state, attempts, next_at, claimed_until, created)
         SELECT id, member_id, title, body, 'pending', 0, created, 0, created FROM alerts
         WHERE kind = $1 AND source = $2
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(kind)
    .bind(source)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub struct NewsAlerts {
    /// The alerts go out by e-mail too.
    pub mailing: bool,
}

#[derive(Deserialize)]
struct News {
    id: String,
    sector: String,
    headline: String,
    sentiment: f64,
}

impl Handler for NewsAlerts {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if event.ty != "invest.news.registered" {
                return Ok(());
            }
            let news: News = event
                .data_as()
                .map_err(|e| HandlerError::permanent(e.to_string()))?;
            let mood = if news.sentiment >= 0.0 { "good" } else { "bad" };
            let title = format!("News for {}, which you hold", news.sector);
            let body = format!(
                "{} ({mood} news, sentiment {:+.2})",
                news.headline, news.sentiment
            );
            let done = query(
                "INSERT INTO alerts (id, member_id, kind, source, ticker, sector, title, body, created)
                 SELECT 'news:' || $1 || ':' || h.member_id, h.member_id, 'news', $1, NULL, $2, $3, $4, $5
                 FROM (SELECT DISTINCT member_id FROM holders WHERE sector = $2 AND quantity > 0) h
                 WHERE true
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&news.id)
            .bind(&news.sector)
            .bind(&title)
            .bind(&body)
            .bind(tessera::unix_now_ms())
            .execute(&mut **tx)
            .await?;
            if self.mailing {
                mail_alerts(tx, "news", &news.id).await?;
            }
            tracing::info!(news = %news.id, sector = %news.sector, alerts = done.rows_affected(), "news fanned out to holders");
            Ok(())
        })
    }
}

pub struct SignalAlerts {
    pub mailing: bool,
}

#[derive(Deserialize)]
struct SignalChanged {
    ticker: String,
    signal: String,
    #[serde(default)]
    previous: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

impl Handler for SignalAlerts {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: &'a mut Tx,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if event.ty != "invest.signal.changed" {
                return Ok(());
            }
            let s: SignalChanged = event
                .data_as()
                .map_err(|e| HandlerError::permanent(e.to_string()))?;
            let title = format!("{}: the signal is now {}", s.ticker, s.signal);
            let body = match (&s.previous, &s.reason) {
                (Some(p), Some(r)) => format!("was {p}; {r}"),
                (None, Some(r)) => r.clone(),
                (Some(p), None) => format!("was {p}"),
                (None, None) => String::new(),
            };
            let done = query(
                "INSERT INTO alerts (id, member_id, kind, source, ticker, sector, title, body, created)
                 SELECT 'signal:' || $1 || ':' || m.member_id, m.member_id, 'signal', $1, $2, NULL, $3, $4, $5
                 FROM (SELECT member_id FROM followers WHERE ticker = $2 AND following
                       UNION SELECT member_id FROM holders WHERE ticker = $2 AND quantity > 0) m
                 WHERE true
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&event.id)
            .bind(&s.ticker)
            .bind(&title)
            .bind(&body)
            .bind(tessera::unix_now_ms())
            .execute(&mut **tx)
            .await?;
            if self.mailing {
                mail_alerts(tx, "signal", &event.id).await?;
            }
            tracing::info!(ticker = %s.ticker, signal = %s.signal, alerts = done.rows_affected(), "signal change fanned out");
            Ok(())
        })
    }
}

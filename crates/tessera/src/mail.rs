//! Mail from a service (`tessera_mail`: the queue and the SMTP sender), configured by its
//! settings and addressed through the system's auth service:
//!
//! | setting | |
//! |---|---|
//! | `MAIL_SMTP_HOST` | the SMTP server; unset: no mail is sent (and none queued) |
//! | `MAIL_SMTP_PORT` | 587, 465 with `tls` |
//! | `MAIL_SMTP_SECURITY` | `starttls` (default, required), `tls` (SMTPS), or `none` |
//! | `MAIL_SMTP_USER`, `MAIL_SMTP_PASSWORD` | when the server asks (the password is a secret) |
//! | `MAIL_SMTP_CA` | a PEM file of the server certificate's CA, when not a public one |
//! | `MAIL_FROM` | the sender: `Shop <shop@example.com>` |
//!
//! A recipient is a user id; its address is asked of `auth` (`GET /internal/users/{id}`, with
//! the service's own passport) when the message goes out.

use std::sync::Arc;

pub use tessera_mail::{Mail, Security, SendError, Smtp, queue};

use crate::{ConfigError, Context};

/// The service's SMTP settings; None when `MAIL_SMTP_HOST` is not set.
pub fn settings(s: &crate::Settings) -> Result<Option<Smtp>, ConfigError> {
    let Some(host) = s
        .get_or::<String>("MAIL_SMTP_HOST", String::new())
        .ok()
        .filter(|h| !h.is_empty())
    else {
        return Ok(None);
    };
    let security = match s
        .get_or::<String>("MAIL_SMTP_SECURITY", "starttls".into())?
        .as_str()
    {
        "starttls" => Security::StartTls,
        "tls" => Security::Tls,
        "none" => Security::None,
        other => {
            return Err(ConfigError::new(
                "MAIL_SMTP_SECURITY",
                format!("{other:?}: starttls, tls or none"),
            ));
        }
    };
    let user = s.get_or::<String>("MAIL_SMTP_USER", String::new())?;
    let password = s.get_or::<String>("MAIL_SMTP_PASSWORD", String::new())?;
    let ca = s.get_or::<String>("MAIL_SMTP_CA", String::new())?;
    Ok(Some(Smtp {
        host,
        // SMTPS listens on 465; submission with STARTTLS (and a plain relay) on 587.
        port: s.get_or(
            "MAIL_SMTP_PORT",
            if security == Security::Tls {
                465u16
            } else {
                587
            },
        )?,
        security,
        credentials: (!user.is_empty()).then_some((user, password)),
        ca: (!ca.is_empty()).then(|| ca.into()),
        from: s.require("MAIL_FROM")?,
    }))
}

#[derive(serde::Deserialize)]
struct User {
    email: String,
}

/// Starts the sender if the service's settings name an SMTP server: whether mail goes out.
pub fn start(ctx: &Context) -> anyhow::Result<bool> {
    let Some(smtp) = settings(&ctx.settings)? else {
        return Ok(false);
    };
    let client = ctx.client.clone();
    let resolve: tessera_mail::Resolve = Arc::new(move |user: String| {
        let client = client.clone();
        Box::pin(async move {
            client
                .get::<User>("auth", &format!("/internal/users/{}", segment(&user)))
                .await
                .map(|u| u.email)
                .map_err(|e| match e {
                    crate::CallError::Status { status, .. }
                        if status == http::StatusCode::NOT_FOUND =>
                    {
                        SendError::Permanent(format!("no user {user}"))
                    }
                    e => SendError::Retry(e.to_string()),
                })
        })
    });
    let sender =
        tessera_mail::Sender::new(ctx.db().clone(), &smtp, resolve).map_err(anyhow::Error::msg)?;
    sender.start(ctx.config.instance.clone());
    ctx.mailing
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(host = %smtp.host, port = smtp.port, "mail goes out by SMTP");
    Ok(true)
}

/// `user` as one path segment (a user id is the service's data: nothing in it may change the
/// path asked for).
fn segment(user: &str) -> String {
    let mut out = String::with_capacity(user.len());
    for b in user.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

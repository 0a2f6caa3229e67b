//! A Redis user per process, as for NATS and etcd (`docs/scale-out.md`): whoever holds one
//! process's password reaches only that process's keys. The gateways' user reads and writes
//! the rate limits and the revocations (and their channel); a service's, its own caches
//! (`<prefix>:cache:<service>.*`); none may run the administrative or dangerous commands
//! (`ACL`, `CONFIG`, `FLUSHALL`, `KEYS`, ...). Only the control plane, as Redis's `default`
//! user, makes them, and makes them again when Redis has forgotten them.

use crate::RedisSettings;

/// What a user may touch: key patterns and channels.
struct Grants {
    keys: Vec<String>,
    channels: Vec<String>,
}

/// The keys of service `service`'s caches (`Context::cache` names them `<service>.<name>`).
pub(crate) fn cache_keys(prefix: &str, service: &str) -> String {
    format!("{prefix}:cache:{service}.*")
}

/// Keeps the gateways' user and one per service, each with its password, on the Redis
/// `admin` names (as its `default` user), for as long as this process lives: made (again,
/// with today's passwords and rights) as soon as Redis answers, and made again whenever one
/// is gone (a Redis restarted without persistence forgets its users; a look a second, `ACL
/// USERS`, finds out).
pub async fn keep_provisioned(
    admin: RedisSettings,
    gateway_password: String,
    services: Vec<(String, String)>,
) {
    let mut expected: Vec<String> = services.iter().map(|(s, _)| admin.user_of(s)).collect();
    expected.push(admin.user_of("gateway"));
    let mut failing = false;
    let mut made = false;
    let mut conn = None;
    loop {
        let round = async {
            if conn.is_none() {
                // A client of its own each time: its TLS identity read again.
                let client = admin.client().map_err(|e| e.to_string())?;
                conn = Some(
                    tokio::time::timeout(
                        crate::PATIENCE,
                        client.get_multiplexed_async_connection(),
                    )
                    .await
                    .map_err(|_| "connecting timed out".to_string())?
                    .map_err(|e| e.to_string())?,
                );
            }
            let conn = conn.as_mut().expect("connected above");
            let users: Vec<String> = tokio::time::timeout(
                crate::PATIENCE,
                redis::cmd("ACL").arg("USERS").query_async(conn),
            )
            .await
            .map_err(|_| "reading users timed out".to_string())?
            .map_err(|e| e.to_string())?;
            if !made || expected.iter().any(|u| !users.contains(u)) {
                provision(conn, &admin, &gateway_password, &services).await?;
                made = true;
                tracing::info!(services = services.len(), "redis's users are provisioned");
            }
            Ok::<(), String>(())
        }
        .await;
        match round {
            Ok(()) => failing = false,
            Err(e) => {
                conn = None;
                if !failing {
                    tracing::warn!(error = %e, "cannot provision redis's users yet; retrying");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Makes (or remakes, with the same rights) every user.
async fn provision(
    conn: &mut redis::aio::MultiplexedConnection,
    admin: &RedisSettings,
    gateway_password: &str,
    services: &[(String, String)],
) -> Result<(), String> {
    let prefix = &admin.prefix;
    let mut users = Vec::new();
    for (service, password) in services {
        users.push((
            admin.user_of(service),
            password.clone(),
            Grants {
                keys: vec![cache_keys(prefix, service)],
                channels: Vec::new(),
            },
        ));
    }
    // The gateways' last: its presence says they all are.
    users.push((
        admin.user_of("gateway"),
        gateway_password.to_string(),
        Grants {
            keys: vec![format!("{prefix}:rl:*"), format!("{prefix}:revoked")],
            channels: vec![format!("{prefix}:revocations")],
        },
    ));
    for (user, password, grants) in users {
        // One command: the user never exists with other rights than these.
        let mut acl = redis::cmd("ACL");
        acl.arg("SETUSER")
            .arg(&user)
            .arg("reset")
            .arg("on")
            .arg(format!(">{password}"));
        for keys in &grants.keys {
            acl.arg(format!("~{keys}"));
        }
        for channel in &grants.channels {
            acl.arg(format!("&{channel}"));
        }
        // And none of what reaches past its keys: listing every key's name (`SCAN` is not
        // held to key patterns before Redis 7.2), the server's size, its channels, or the
        // scripts and functions every user shares.
        acl.arg("+@all")
            .arg("-@admin")
            .arg("-@dangerous")
            .arg("-scan")
            .arg("-randomkey")
            .arg("-dbsize")
            .arg("-pubsub")
            .arg("-script|flush")
            .arg("-script|kill")
            .arg("-function");
        tokio::time::timeout(crate::PATIENCE, acl.query_async::<()>(&mut *conn))
            .await
            .map_err(|_| format!("making user {user} timed out"))?
            .map_err(|e| format!("cannot make user {user}: {e}"))?;
    }
    Ok(())
}

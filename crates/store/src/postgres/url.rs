//! Reading a PostgreSQL URL: the driver's own options, the pool's size (`pool=N`, ours), and
//! the URL as it may be shown (its password replaced by `***`).

use std::str::FromStr;
use std::time::Duration;

/// Connections per pool unless the URL says otherwise (`?pool=N`). Small on purpose: a
/// server allows about a hundred connections in all, shared by every replica of every
/// service on it, and a statement holds a connection for one round trip only.
const POOL_SIZE: usize = 8;
/// How long opening a connection may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A PostgreSQL URL, read.
pub(crate) struct PgUrl {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) pool_size: usize,
    /// The URL with its password replaced by `***`.
    pub(crate) shown: String,
}

/// Whether `url` names a PostgreSQL database.
pub(crate) fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

impl PgUrl {
    /// Reads `url`; the error names what is wrong, never the password.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let shown = redact(url);
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut pool_size = POOL_SIZE;
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("pool", n)) => {
                    pool_size = n
                        .parse()
                        .ok()
                        .filter(|n| (1..=1000).contains(n))
                        .ok_or_else(|| format!("{shown}: pool={n} is not a size from 1 to 1000"))?;
                }
                _ => passed.push(pair),
            }
        }
        let driver = if passed.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", passed.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&driver).map_err(|e| {
            // The driver's message may quote the URL; it is not repeated.
            let why = e.to_string();
            let why = if why.contains(url) || why.contains(&driver) {
                "invalid URL".to_string()
            } else {
                why
            };
            format!("{shown}: {why}")
        })?;
        if config.get_hosts().is_empty() {
            return Err(format!("{shown}: no host"));
        }
        if config.get_dbname().is_none() {
            return Err(format!(
                "{shown}: no database name (postgres://user@host/<name>)"
            ));
        }
        if config.get_user().is_none() {
            return Err(format!("{shown}: no user (postgres://<user>@host/name)"));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        Ok(PgUrl {
            config,
            pool_size,
            shown,
        })
    }
}

/// `url` with its password (in the user part, or as `password=` in the query) replaced by
/// `***`. The user part ends at the first `@` after the scheme (a password may hold a `?` or a
/// `/`, as the driver reads it).
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return redact_query(url);
    };
    match rest.split_once('@') {
        Some((user, after)) => {
            let name = user.split_once(':').map_or(user, |(name, _)| name);
            let hidden = if user.contains(':') { ":***" } else { "" };
            format!("{scheme}://{name}{hidden}@{}", redact_query(after))
        }
        None => format!("{scheme}://{}", redact_query(rest)),
    }
}

/// `text` with any `password=` in its query replaced by `password=***`.
fn redact_query(text: &str) -> String {
    let Some((base, query)) = text.split_once('?') else {
        return text.to_string();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=***".to_string(),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(
            redact("postgres://shop:s3cret@db:5432/orders?pool=4"),
            "postgres://shop:***@db:5432/orders?pool=4"
        );
        assert_eq!(
            redact("postgres://shop@db/orders?password=s3cret&sslmode=disable"),
            "postgres://shop@db/orders?password=***&sslmode=disable"
        );
        let bad = PgUrl::parse("postgres://shop:s3cret@db/orders?pool=lots")
            .err()
            .unwrap();
        assert!(
            bad.contains("pool=lots") && !bad.contains("s3cret"),
            "{bad}"
        );
        let bad = PgUrl::parse("postgres://shop:s3cret@db/orders?nonsense=1")
            .err()
            .unwrap();
        assert!(!bad.contains("s3cret"), "{bad}");
    }

    #[test]
    fn reads_the_pool_size_and_asks_for_a_database_and_a_user() {
        let url = PgUrl::parse("postgres://shop:pw@127.0.0.1:5432/orders?pool=3").unwrap();
        assert_eq!(url.pool_size, 3);
        assert_eq!(url.config.get_dbname(), Some("orders"));
        assert_eq!(url.config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        assert_eq!(
            PgUrl::parse("postgres://shop@h/db").unwrap().pool_size,
            POOL_SIZE
        );
        assert!(
            PgUrl::parse("postgres://shop@h")
                .err()
                .unwrap()
                .contains("no database")
        );
        assert!(
            PgUrl::parse("postgres://h/db")
                .err()
                .unwrap()
                .contains("no user")
        );
    }
}

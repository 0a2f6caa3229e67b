//! The URL of an external engine (NATS, etcd, Redis), and the credential it carries.
//!
//! Every engine is found by one URL: `<scheme>://[user:password@]host:port[,host:port…][?k=v&…]`,
//! several hosts for a cluster. The user and password are the process's own (derived per
//! service by the runner, `ControlKeys::secret_for`), so the URL is a secret: [`EngineUrl`]'s
//! `Debug` and [`EngineUrl::redacted`] never show the password, and nothing logs the raw URL.
//!
//! One parser for all engines, so that a password holding `?`, `/` or `@` (percent-escaped or
//! not) reads the same everywhere.

use std::fmt;

/// A parsed engine URL.
#[derive(Clone, PartialEq, Eq)]
pub struct EngineUrl {
    pub scheme: String,
    /// User and password, percent-decoded.
    pub user: Option<(String, String)>,
    /// `host:port` for each member, in the order given.
    pub hosts: Vec<String>,
    /// The settings after `?`, in order (keys may repeat; the engine decides).
    pub query: Vec<(String, String)>,
}

impl EngineUrl {
    /// Parses `url`, which must have the given scheme; a host without a port gets
    /// `default_port` (the engine's own: 4222, 2379, 6379).
    pub fn parse(url: &str, scheme: &str, default_port: u16) -> Result<Self, String> {
        let rest = url
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .ok_or_else(|| format!("the URL must start with {scheme}://"))?;
        // The user and password first, up to the last '@': a password may hold '?' or '/'.
        let (user, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => {
                let (name, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((decode(name)?, decode(password)?)), rest)
            }
            None => (None, rest),
        };
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hosts: Vec<String> = hosts
            .trim_end_matches('/')
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                // `[v6]` or a name alone: the default port.
                if h.ends_with(']') || !h.contains(':') {
                    format!("{h}:{default_port}")
                } else {
                    h.to_string()
                }
            })
            .collect();
        if hosts.is_empty() {
            return Err(format!("a {scheme} URL names at least one host:port"));
        }
        for h in &hosts {
            let port = h.rsplit_once(':').map(|(_, p)| p);
            if port.is_none_or(|p| p.parse::<u16>().is_err()) {
                return Err(format!("{h:?} is not host:port"));
            }
        }
        let query = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        Ok(Self {
            scheme: scheme.to_string(),
            user,
            hosts,
            query,
        })
    }

    /// The one setting a URL may have, `prefix` (default `tessera`): what a system's keys,
    /// subjects and user names start with, so that several systems share one engine. Letters,
    /// digits or `_` only: no `-`, which joins the prefix to a process's name in user names (a
    /// service's name may hold one: `shop` + `eu-auth` ≠ `shop-eu` + `auth`). Any other
    /// setting is refused.
    pub fn prefix(&self) -> Result<String, String> {
        let mut prefix = "tessera".to_string();
        for (key, value) in &self.query {
            match key.as_str() {
                "prefix" => {
                    if value.is_empty()
                        || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err("prefix must be letters, digits or '_'".into());
                    }
                    prefix = value.clone();
                }
                other => return Err(format!("unknown setting {other:?}")),
            }
        }
        Ok(prefix)
    }

    /// The URL with the password replaced, fit for a log line or an error.
    pub fn redacted(&self) -> String {
        self.write(false)
    }

    /// The URL, password included (percent-encoded): for a process's environment only.
    pub fn to_url(&self) -> String {
        self.write(true)
    }

    /// This URL as `user` with `password` (what the runner gives each process).
    pub fn as_user(&self, user: &str, password: &str) -> Self {
        Self {
            user: Some((user.to_string(), password.to_string())),
            ..self.clone()
        }
    }

    fn write(&self, with_password: bool) -> String {
        let mut out = format!("{}://", self.scheme);
        if let Some((user, password)) = &self.user {
            out.push_str(&encode(user));
            out.push(':');
            out.push_str(&if with_password {
                encode(password)
            } else {
                "***".into()
            });
            out.push('@');
        }
        out.push_str(&self.hosts.join(","));
        if !self.query.is_empty() {
            out.push('?');
            let pairs: Vec<String> = self.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&pairs.join("&"));
        }
        out
    }
}

impl fmt::Debug for EngineUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Percent-encodes a user or password for an engine URL (everything but unreserved
/// characters), the inverse of what [`EngineUrl::parse`] decodes.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decoding of a URL's user or password.
fn decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a bad %-escape in the URL's user or password")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL's user or password is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_users_hosts_and_settings() {
        let u = EngineUrl::parse(
            "etcd://svc:p%40ss?/w@h1:2379,h2:2379/?prefix=x&a",
            "etcd",
            2379,
        )
        .unwrap();
        assert_eq!(u.user, Some(("svc".into(), "p@ss?/w".into())));
        assert_eq!(u.hosts, ["h1:2379", "h2:2379"]);
        assert_eq!(
            u.query,
            [("prefix".into(), "x".into()), ("a".into(), String::new())]
        );
        assert!(!format!("{u:?}").contains("ss"), "{u:?}");
        assert_eq!(u.redacted(), "etcd://svc:***@h1:2379,h2:2379?prefix=x&a=");
    }

    #[test]
    fn refuses_what_is_not_one() {
        assert!(EngineUrl::parse("nats://h:1", "etcd", 2379).is_err());
        assert!(EngineUrl::parse("etcd://", "etcd", 2379).is_err());
        assert_eq!(
            EngineUrl::parse("etcd://host,[::1]", "etcd", 2379)
                .unwrap()
                .hosts,
            ["host:2379", "[::1]:2379"]
        );
        assert!(EngineUrl::parse("etcd://host:99999", "etcd", 2379).is_err());
        assert!(EngineUrl::parse("etcd://u:%zz@h:1", "etcd", 2379).is_err());
    }

    #[test]
    fn encode_is_decode_inverse() {
        let secret = "a/b?c@d:e%f g";
        let url = format!("redis://u:{}@h:1", encode(secret));
        let u = EngineUrl::parse(&url, "redis", 6379).unwrap();
        assert_eq!(u.user.unwrap().1, secret);
    }
}

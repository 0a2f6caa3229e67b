//! The auth service's settings (`env` in the manifest), read and checked once at start.

/// The service's own settings (from the manifest's `env`).
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// `AUTH_ISSUER`: the access tokens' `iss`.
    pub issuer: String,
    /// `AUTH_AUDIENCE`: the access tokens' `aud`.
    pub audience: String,
    /// `AUTH_ACCESS_TTL_SECS`.
    pub access_ttl: u64,
    /// `AUTH_REFRESH_TTL_SECS`: how long a session lasts without logging in again.
    pub refresh_ttl: u64,
    /// `AUTH_ADMIN_EMAIL` / `AUTH_ADMIN_PASSWORD`: the admin created on first start.
    pub admin: Option<(String, String)>,
}

impl AuthConfig {
    pub fn from_settings(s: &tessera::Settings) -> Result<Self, tessera::ConfigError> {
        let admin = match (s.raw("AUTH_ADMIN_EMAIL"), s.raw("AUTH_ADMIN_PASSWORD")) {
            (Some(e), Some(p)) => Some((e.to_string(), p.to_string())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(tessera::ConfigError::new(
                    "AUTH_ADMIN_PASSWORD",
                    "is required with AUTH_ADMIN_EMAIL",
                ));
            }
            (None, Some(_)) => {
                return Err(tessera::ConfigError::new(
                    "AUTH_ADMIN_EMAIL",
                    "is required with AUTH_ADMIN_PASSWORD",
                ));
            }
        };
        let access_ttl = s.get_or("AUTH_ACCESS_TTL_SECS", 900u64)?;
        if !(5..=86_400).contains(&access_ttl) {
            return Err(tessera::ConfigError::new(
                "AUTH_ACCESS_TTL_SECS",
                "must be 5 to 86400",
            ));
        }
        Ok(Self {
            issuer: s.get_or("AUTH_ISSUER", "tessera-auth".to_string())?,
            audience: s.get_or("AUTH_AUDIENCE", "tessera-api".to_string())?,
            access_ttl,
            refresh_ttl: s.get_or("AUTH_REFRESH_TTL_SECS", 30 * 86_400u64)?,
            admin,
        })
    }
}

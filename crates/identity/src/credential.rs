//! A process's credential, as it is handed to the process and sent with its calls.

use std::fmt;

use crate::Principal;

/// The environment variable the runner puts a process's credential in.
pub const CREDENTIAL_ENV: &str = "TESSERA_CREDENTIAL";

/// A credential: who it speaks for, and the token that proves it. Its `Debug` and `Display`
/// show the principal only, so a credential never reaches a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    principal: Principal,
    token: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("a credential reads <principal>.<key id>.<MAC>")]
    Malformed,
    #[error("the credential's principal is not service:<name>, gateway, supervisor or admin")]
    Principal,
}

impl Credential {
    pub(crate) fn new(principal: Principal, token: String) -> Self {
        Self { principal, token }
    }

    /// Reads a credential as the runner hands it out. This checks its form only: whether its
    /// MAC is right is for the control plane, which holds the keys, to say.
    pub fn parse(token: &str) -> Result<Self, CredentialError> {
        let (principal, _kid, _mac) = split(token)?;
        let principal = Principal::parse(principal).ok_or(CredentialError::Principal)?;
        Ok(Self {
            principal,
            token: token.to_string(),
        })
    }

    /// The credential in [`CREDENTIAL_ENV`], if it is set.
    pub fn from_env() -> Result<Option<Self>, CredentialError> {
        match std::env::var(CREDENTIAL_ENV) {
            Ok(v) if !v.trim().is_empty() => Self::parse(v.trim()).map(Some),
            _ => Ok(None),
        }
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The token itself, as sent after `Bearer `.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The value of an `Authorization` header that carries it.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.token)
    }
}

/// A token's three parts: the principal, the key id and the MAC.
pub(crate) fn split(token: &str) -> Result<(&str, &str, &str), CredentialError> {
    let mut parts = token.rsplitn(3, '.');
    let (Some(mac), Some(kid), Some(principal)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(CredentialError::Malformed);
    };
    // The key id is letters and digits, the MAC base64url: nothing else may ride in a header.
    let kid_ok = !kid.is_empty() && kid.bytes().all(|b| b.is_ascii_alphanumeric());
    let mac_ok = !mac.is_empty()
        && mac
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !kid_ok || !mac_ok || principal.is_empty() {
        return Err(CredentialError::Malformed);
    }
    Ok((principal, kid, mac))
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({})", self.principal)
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.principal)
    }
}

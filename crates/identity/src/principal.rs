//! The principals of a system: who a credential speaks for.

use std::fmt;

/// Who a process is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A service of the system, by its name in the manifest (`service:<name>`).
    Service(String),
    /// A gateway (`gateway`): reads the registry to route.
    Gateway,
    /// The runner that starts and restarts the processes (`supervisor`): reads the registry,
    /// and removes the instances of processes it saw die.
    Supervisor,
    /// An operator (`admin`): reads everything, replays dead letters, removes instances.
    Admin,
}

impl Principal {
    /// Reads `service:<name>`, `gateway`, `supervisor` or `admin`. A service's name is
    /// letters, digits, `-` and `_`, as the manifest and `TESSERA_SERVICE` require.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gateway" => Some(Self::Gateway),
            "supervisor" => Some(Self::Supervisor),
            "admin" => Some(Self::Admin),
            _ => {
                let name = s.strip_prefix("service:")?;
                valid_service_name(name).then(|| Self::Service(name.to_string()))
            }
        }
    }

    /// The service's name, if this is a service.
    pub fn service(&self) -> Option<&str> {
        match self {
            Self::Service(name) => Some(name),
            _ => None,
        }
    }

    /// The supervisor or an admin: those who operate the system rather than take part in it.
    pub fn is_operator(&self) -> bool {
        matches!(self, Self::Supervisor | Self::Admin)
    }
}

/// Letters, digits, `-` and `_`, not empty: what a service may be called.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Service(name) => write!(f, "service:{name}"),
            Self::Gateway => f.write_str("gateway"),
            Self::Supervisor => f.write_str("supervisor"),
            Self::Admin => f.write_str("admin"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_read_back_as_written() {
        for p in [
            Principal::Service("payment-provider".into()),
            Principal::Gateway,
            Principal::Supervisor,
            Principal::Admin,
        ] {
            assert_eq!(Principal::parse(&p.to_string()), Some(p));
        }
        for bad in [
            "",
            "service:",
            "service:a.b",
            "service:a b",
            "root",
            "Service:x",
        ] {
            assert_eq!(Principal::parse(bad), None, "{bad:?}");
        }
    }
}

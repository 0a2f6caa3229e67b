//! A block of addresses, `10.0.0.0/8` or `::1/128` (or one address, a block of one), as the
//! gateway's trusted proxies are written.
//!
//! Parsed once, when the manifest is read: a malformed block stops the start with a message
//! that names it, and matching a peer against the blocks on every request is a mask and a
//! compare, with no parsing.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;

/// A CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    /// The first address of the block (the written address with its host bits cleared).
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block. An IPv4 address a dual-stack socket reports as
    /// IPv4-mapped IPv6 (`::ffff:10.1.2.3`) is matched as the IPv4 address it is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        mask(ip.to_canonical(), self.prefix).is_some_and(|masked| masked == self.network)
    }
}

/// `ip` with all but its first `prefix` bits cleared; `None` if `prefix` is too long for it.
fn mask(ip: IpAddr, prefix: u8) -> Option<IpAddr> {
    Some(match ip {
        IpAddr::V4(v4) if prefix <= 32 => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((u32::from(v4) & keep).to_be_bytes())
        }
        IpAddr::V6(v6) if prefix <= 128 => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::from((u128::from(v6) & keep).to_be_bytes())
        }
        _ => return None,
    })
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an address or an address block (a.b.c.d/n)"))?;
        let longest = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => longest,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= longest)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {longest}"))?,
        };
        let network = mask(address.to_canonical(), prefix).ok_or_else(|| {
            format!("{text:?}: the prefix length must be 0 to 32 for an IPv4 address")
        })?;
        Ok(Self { network, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses() {
        let block: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(block.contains(ip("10.0.0.1")) && block.contains(ip("10.255.255.255")));
        assert!(!block.contains(ip("11.0.0.0")) && !block.contains(ip("9.255.255.255")));
        assert!(block.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(!block.contains(ip("::1")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(one.to_string(), "127.0.0.1/32");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let host_bits: Cidr = "192.168.1.77/24".parse().unwrap();
        assert_eq!(host_bits.to_string(), "192.168.1.0/24");
        assert!(host_bits.contains(ip("192.168.1.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
    }

    #[test]
    fn malformed_blocks_are_refused() {
        for text in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "10.0.0.0/x",
            "host/8",
        ] {
            assert!(text.parse::<Cidr>().is_err(), "{text}");
        }
    }
}

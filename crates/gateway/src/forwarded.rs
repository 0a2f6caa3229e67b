//! Where a request comes from: the client address the per-address rate limits count, and
//! what an instance is told in `X-Forwarded-For`, `Forwarded` (RFC 7239) and
//! `X-Forwarded-Proto`.
//!
//! A client can write anything in those fields, so a client's own are dropped (with
//! `X-Forwarded-Host` and `X-Real-IP`, which say the same kind of thing) and the gateway
//! states what it saw: the connection's peer, and its scheme (`https` over TLS). The exception is a peer the
//! manifest trusts (`gateway.trusted_proxies`: a load balancer in front of the gateway): its
//! chain is kept and its own address appended, as each proxy of a chain does, its
//! `X-Forwarded-Proto` is kept (it saw the client's scheme), and the client is the first
//! address of its `X-Forwarded-For` from the right that is not a trusted proxy: what is left
//! of that was written by the client and proves nothing.
//!
//! Nothing is allocated on the way: the fields are read from the head in place, and the values
//! are built in buffers on the stack (a chain too long for them, which only a trusted proxy
//! can send, goes to the heap).

use std::net::{IpAddr, SocketAddr};

use tessera_manifest::Cidr;

use crate::fields::Fields;

/// The peers whose forwarding fields are believed; none by default.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn new(blocks: &[Cidr]) -> Self {
        Self(blocks.to_vec())
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(ip))
    }

    /// The address of the client a request speaks for: `peer`, or, from a trusted proxy, the
    /// first address of its chain from the right that is not a trusted proxy (the leftmost
    /// when they all are). An entry that is not an address ends the walk: the last one read
    /// before it is the client.
    pub fn client(&self, peer: IpAddr, fields: &Fields<'_>) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let chain = fields
            .iter()
            .rev()
            .filter(|(name, _)| name.eq_ignore_ascii_case(b"x-forwarded-for"))
            .flat_map(|(_, value)| value.rsplit(|b| *b == b','));
        let mut client = peer;
        for entry in chain {
            let Some(ip) = node(entry.trim_ascii()) else {
                break;
            };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }

    /// The forwarding fields for a request from `peer` with `fields`, which came over TLS if
    /// `secure`.
    pub fn fields<'a>(&self, peer: IpAddr, secure: bool, fields: &Fields<'a>) -> Forwarding<'a> {
        let scheme: &'static [u8] = if secure { b"https" } else { b"http" };
        let mut out = Forwarding {
            x_forwarded_for: Value::default(),
            forwarded: Value::default(),
            proto: scheme,
            from_proxy: self.trusts(peer),
        };
        if out.from_proxy {
            let mut proto = None;
            for (name, value) in fields.iter() {
                if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                    out.x_forwarded_for.push_item(value.trim_ascii());
                } else if name.eq_ignore_ascii_case(b"forwarded") {
                    out.forwarded.push_item(value.trim_ascii());
                } else if name.eq_ignore_ascii_case(b"x-forwarded-proto") {
                    proto = proto.or(Some(value.trim_ascii()));
                }
            }
            out.proto = proto.filter(|p| !p.is_empty()).unwrap_or(scheme);
        }
        let mut text = [0u8; IP_TEXT];
        let peer_text = ip_text(peer, &mut text);
        out.x_forwarded_for.separate();
        out.x_forwarded_for.push(peer_text);
        out.forwarded.separate();
        match peer {
            IpAddr::V4(_) => {
                out.forwarded.push(b"for=");
                out.forwarded.push(peer_text);
            }
            IpAddr::V6(_) => {
                out.forwarded.push(b"for=\"[");
                out.forwarded.push(peer_text);
                out.forwarded.push(b"]\"");
            }
        }
        out.forwarded.push(b";proto=");
        out.forwarded.push(scheme);
        out
    }
}

/// Bytes of an address's text at most (an IPv6 address with an IPv4 tail).
const IP_TEXT: usize = 45;

/// `ip` as text, written into `buf`: an IPv4 address digit by digit, as `Display` writes it but
/// without the formatting machinery, which was over 1 % of the gateway's CPU per
/// request (it ran twice a request); IPv6 (rarer) through `Display`.
fn ip_text(ip: IpAddr, buf: &mut [u8; IP_TEXT]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            let mut at = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[at] = b'.';
                    at += 1;
                }
                if octet >= 100 {
                    buf[at] = b'0' + octet / 100;
                    at += 1;
                }
                if octet >= 10 {
                    buf[at] = b'0' + octet / 10 % 10;
                    at += 1;
                }
                buf[at] = b'0' + octet % 10;
                at += 1;
            }
            &buf[..at]
        }
        IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{v6}"));
            let at = cursor.position() as usize;
            &buf[..at]
        }
    }
}

/// The forwarding fields of one request, as they go upstream.
pub struct Forwarding<'a> {
    pub x_forwarded_for: Value,
    pub forwarded: Value,
    pub proto: &'a [u8],
    /// The peer is a trusted proxy: its other forwarding fields go on ([`not_from_a_proxy`]).
    pub from_proxy: bool,
}

/// The forwarding fields of a client's that are not sent on: those the gateway writes
/// itself, and those it cannot be believed on.
pub fn not_from_a_client(name: &[u8]) -> bool {
    not_from_a_proxy(name)
        || name.eq_ignore_ascii_case(b"x-forwarded-host")
        || name.eq_ignore_ascii_case(b"x-real-ip")
}

/// The forwarding fields of a trusted proxy's that are not sent on: those the gateway writes
/// itself (from the proxy's, extended).
pub fn not_from_a_proxy(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"x-forwarded-for")
        || name.eq_ignore_ascii_case(b"forwarded")
        || name.eq_ignore_ascii_case(b"x-forwarded-proto")
}

/// An `X-Forwarded-For` entry's address: `a.b.c.d`, an IPv6 address, bracketed or not, and
/// either with a port (as some proxies write them).
fn node(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| text.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// Bytes of a value kept on the stack: a peer's address with its `Forwarded` syntax, or a
/// short chain from a proxy.
const INLINE: usize = 160;

/// A field value built for one request: on the stack while it fits, on the heap past that.
pub enum Value {
    Inline([u8; INLINE], u8),
    Heap(Vec<u8>),
}

impl Default for Value {
    fn default() -> Self {
        Value::Inline([0; INLINE], 0)
    }
}

impl Value {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Inline(buf, len) => &buf[..usize::from(*len)],
            Value::Heap(v) => v,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        match self {
            Value::Inline(buf, len) if usize::from(*len) + bytes.len() <= INLINE => {
                let at = usize::from(*len);
                buf[at..at + bytes.len()].copy_from_slice(bytes);
                *len = (at + bytes.len()) as u8; // at most INLINE, under 256
            }
            Value::Inline(buf, len) => {
                let mut heap = Vec::with_capacity(usize::from(*len) + bytes.len() + 64);
                heap.extend_from_slice(&buf[..usize::from(*len)]);
                heap.extend_from_slice(bytes);
                *self = Value::Heap(heap);
            }
            Value::Heap(v) => v.extend_from_slice(bytes),
        }
    }

    /// `, ` if the list has an item already.
    fn separate(&mut self) {
        if !self.as_bytes().is_empty() {
            self.push(b", ");
        }
    }

    /// Appends a list item (or items): nothing if it is empty.
    fn push_item(&mut self, item: &[u8]) {
        if !item.is_empty() {
            self.separate();
            self.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Head;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn trusting(blocks: &[&str]) -> TrustedProxies {
        let blocks: Vec<Cidr> = blocks.iter().map(|b| b.parse().unwrap()).collect();
        TrustedProxies::new(&blocks)
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn an_address_is_written_as_display_writes_it() {
        let mut buf = [0; IP_TEXT];
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "9.10.99.100",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "2001:db8::1",
            "::ffff:192.0.2.128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            assert_eq!(text(ip_text(ip(a), &mut buf)), a);
        }
        for n in (0..=u32::MAX).step_by(65_537) {
            let v4 = IpAddr::V4(n.into());
            assert_eq!(text(ip_text(v4, &mut buf)), v4.to_string());
        }
    }

    #[test]
    fn a_clients_fields_are_replaced_by_what_the_gateway_saw() {
        let head = Head::request(&[
            "X-Forwarded-For: 6.6.6.6",
            "Forwarded: for=6.6.6.6",
            "X-Forwarded-Proto: https",
        ]);
        for proxies in [trusting(&[]), trusting(&["10.0.0.0/8"])] {
            let peer = ip("192.0.2.1");
            assert_eq!(proxies.client(peer, &head.fields()), peer);
            let f = proxies.fields(peer, false, &head.fields());
            assert_eq!(text(f.x_forwarded_for.as_bytes()), "192.0.2.1");
            assert_eq!(text(f.forwarded.as_bytes()), "for=192.0.2.1;proto=http");
            assert_eq!(f.proto, b"http");
            assert!(!f.from_proxy);
            for name in [
                "x-forwarded-for",
                "Forwarded",
                "x-forwarded-proto",
                "X-Forwarded-Host",
                "x-real-ip",
            ] {
                assert!(not_from_a_client(name.as_bytes()), "{name}");
            }
            assert!(!not_from_a_client(b"accept"));
            assert!(matches!(f.x_forwarded_for, Value::Inline(..)));
        }
        let f = trusting(&[]).fields(ip("2001:db8::1"), false, &head.fields());
        assert_eq!(
            text(f.forwarded.as_bytes()),
            "for=\"[2001:db8::1]\";proto=http"
        );
        assert_eq!(text(f.x_forwarded_for.as_bytes()), "2001:db8::1");
        // Over TLS, the scheme the gateway saw is https.
        let f = trusting(&[]).fields(ip("192.0.2.1"), true, &head.fields());
        assert_eq!(text(f.forwarded.as_bytes()), "for=192.0.2.1;proto=https");
        assert_eq!(f.proto, b"https");
    }

    #[test]
    fn a_trusted_proxys_chain_is_extended() {
        let proxies = trusting(&["10.0.0.0/8"]);
        let head = Head::request(&[
            "X-Forwarded-For: 203.0.113.7, 10.1.1.1",
            "x-forwarded-for: 10.2.2.2",
            "Forwarded: for=203.0.113.7;proto=https",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: shop.example",
        ]);
        let peer = ip("10.3.3.3");
        let f = proxies.fields(peer, false, &head.fields());
        assert_eq!(
            text(f.x_forwarded_for.as_bytes()),
            "203.0.113.7, 10.1.1.1, 10.2.2.2, 10.3.3.3"
        );
        assert_eq!(
            text(f.forwarded.as_bytes()),
            "for=203.0.113.7;proto=https, for=10.3.3.3;proto=http"
        );
        assert_eq!(f.proto, b"https");
        assert!(f.from_proxy);
        assert!(!not_from_a_proxy(b"x-forwarded-host") && not_from_a_proxy(b"x-forwarded-for"));
        assert_eq!(proxies.client(peer, &head.fields()), ip("203.0.113.7"));

        // A proxy that says nothing is the client's peer.
        let empty = Head::request(&[]);
        let f = proxies.fields(peer, false, &empty.fields());
        assert_eq!(text(f.x_forwarded_for.as_bytes()), "10.3.3.3");
        assert_eq!(f.proto, b"http");

        // A chain too long for the stack goes to the heap, whole.
        let long = format!("X-Forwarded-For: {}", vec!["203.0.113.9"; 40].join(", "));
        let head = Head::request(&[&long]);
        let f = proxies.fields(peer, false, &head.fields());
        assert!(matches!(f.x_forwarded_for, Value::Heap(_)));
        assert!(text(f.x_forwarded_for.as_bytes()).ends_with("203.0.113.9, 10.3.3.3"));
        assert_eq!(text(f.x_forwarded_for.as_bytes()).matches(", ").count(), 40);
    }

    #[test]
    fn the_client_is_the_first_untrusted_address_from_the_right() {
        let proxies = trusting(&["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        let client = |xff: &[&str]| {
            let lines: Vec<String> = xff
                .iter()
                .map(|v| format!("X-Forwarded-For: {v}"))
                .collect();
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            proxies.client(peer, &Head::request(&lines).fields())
        };
        assert_eq!(client(&[]), peer);
        assert_eq!(client(&["203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(
            client(&["6.6.6.6, 203.0.113.7, 10.0.0.1"]),
            ip("203.0.113.7")
        );
        assert_eq!(
            client(&["6.6.6.6", "203.0.113.7, 10.0.0.1"]),
            ip("203.0.113.7")
        );
        assert_eq!(
            client(&["10.0.0.2, 10.0.0.1"]),
            ip("10.0.0.2"),
            "all trusted"
        );
        assert_eq!(client(&["203.0.113.7, junk, 10.0.0.1"]), ip("10.0.0.1"));
        assert_eq!(client(&["203.0.113.7, "]), peer, "an empty entry");
        assert_eq!(client(&["203.0.113.7:4711"]), ip("203.0.113.7"));
        assert_eq!(client(&["[2001:db8::7]:4711"]), ip("2001:db8::7"));
        assert_eq!(client(&["[2001:db8::7]"]), ip("2001:db8::7"));
        // An untrusted peer's chain is not read at all.
        let head = Head::request(&["X-Forwarded-For: 203.0.113.7"]);
        assert_eq!(
            proxies.client(ip("192.0.2.1"), &head.fields()),
            ip("192.0.2.1")
        );
    }
}

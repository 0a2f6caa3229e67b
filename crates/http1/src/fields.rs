//! Header fields as offsets into the bytes of the message head they were parsed from.
//!
//! Heads are read with `httparse`, which hands out slices of the read buffer. Rather
//! than copy every name and value into a header map (an allocation per value, a hash per
//! name), the positions are kept: a request's or response's fields are read in place and
//! written on from there. Names keep the spelling they arrived with; every lookup ignores
//! ASCII case, as HTTP requires.

/// Where one field's name and value are in its head.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

/// Records the fields `httparse` found in `head` (the slices must point into `head`).
pub fn record(head: &[u8], parsed: &[httparse::Header<'_>], into: &mut Vec<Field>) {
    into.clear();
    let base = head.as_ptr() as usize;
    let span = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
    into.extend(parsed.iter().map(|h| Field {
        name: span(h.name.as_bytes()),
        value: span(h.value),
    }));
}

/// Appends a field to a head being built (one that did not arrive as HTTP/1.1 text: an
/// HTTP/2 request's), recording where it is.
pub fn push(head: &mut Vec<u8>, into: &mut Vec<Field>, name: &[u8], value: &[u8]) {
    let at = head.len() as u32;
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
    into.push(Field {
        name: (at, name.len() as u32),
        value: (at + name.len() as u32 + 2, value.len() as u32),
    });
}

/// The fields of one head, for reading.
#[derive(Clone, Copy)]
pub struct Fields<'a> {
    head: &'a [u8],
    fields: &'a [Field],
}

impl<'a> Fields<'a> {
    pub fn new(head: &'a [u8], fields: &'a [Field]) -> Self {
        Self { head, fields }
    }

    pub fn empty() -> Self {
        Self {
            head: &[],
            fields: &[],
        }
    }

    /// Every field in order, `(name, value)`; from the last one with `.rev()`.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let head = self.head;
        self.fields.iter().map(move |f| {
            (
                &head[f.name.0 as usize..(f.name.0 + f.name.1) as usize],
                &head[f.value.0 as usize..(f.value.0 + f.value.1) as usize],
            )
        })
    }

    /// The first value of the field `name` (lowercase), whatever case it was sent in.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The first value of `name` if it is text.
    pub fn get_str(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Whether the comma-separated list `value` holds `token` (ASCII case ignored).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a `Transfer-Encoding` value's last coding is `chunked`, the one that frames the
/// body (RFC 9112 §6.3).
pub fn last_coding_is_chunked(value: &[u8]) -> bool {
    value
        .rsplit(|b| *b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_in_place_ignoring_case() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Two: 1\r\nx-two: 2\r\nConnection: Keep-Alive, Close\r\n\r\n";
        let mut slots = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut slots);
        assert!(req.parse(head).unwrap().is_complete());
        let mut recorded = Vec::new();
        record(head, req.headers, &mut recorded);
        let fields = Fields::new(head, &recorded);
        assert_eq!(fields.get("host"), Some(&b"a"[..]));
        assert_eq!(fields.get_str("x-two"), Some("1"));
        assert!(!fields.contains("x-three"));
        assert_eq!(fields.iter().count(), 4);
        assert_eq!(fields.iter().nth(2), Some((&b"x-two"[..], &b"2"[..])));
        let connection = fields.get("connection").unwrap();
        assert!(has_token(connection, "close") && has_token(connection, "keep-alive"));
        assert!(!has_token(connection, "upgrade"));
        assert_eq!(Fields::empty().iter().count(), 0);

        let (mut built, mut recorded) = (Vec::new(), Vec::new());
        push(&mut built, &mut recorded, b"host", b"shop.test");
        push(&mut built, &mut recorded, b"x-two", b"");
        let fields = Fields::new(&built, &recorded);
        assert_eq!(fields.get_str("Host"), Some("shop.test"));
        assert_eq!(fields.get("x-two"), Some(&b""[..]));
    }
}

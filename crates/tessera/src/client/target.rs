//! Request targets as the wire needs them.

/// `path` as a request target: bytes a target may not hold (spaces, controls, quotes,
/// non-ASCII…) percent-encoded, as a URL parser would, so that a caller's unencoded query
/// value makes a valid request rather than a malformed one.
pub(super) fn request_target(path: &str) -> std::borrow::Cow<'_, str> {
    fn allowed(b: u8) -> bool {
        b.is_ascii_graphic()
            && !matches!(
                b,
                b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
            )
    }
    if path.bytes().all(allowed) {
        return path.into();
    }
    let mut out = String::with_capacity(path.len() + 16);
    for b in path.bytes() {
        if allowed(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_targets_are_encoded_only_where_they_must_be() {
        let clean = "/api/catalog/products/lookup?ids=a,b&x=%20y";
        assert!(matches!(
            request_target(clean),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(
            request_target("/search?q=hello world|\"é\""),
            "/search?q=hello%20world%7C%22%C3%A9%22"
        );
        assert_eq!(request_target("/a\r\nb"), "/a%0D%0Ab");
    }
}

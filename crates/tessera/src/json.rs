//! JSON string escaping for the lines and passports the library writes by hand.
//!
//! Log lines and passports are assembled into one `String` without serde: they are written
//! on every request, and most of their strings (ids, paths, routes, messages) need no
//! escaping, so the scan for the bytes that do runs eight at a time.

use std::fmt::Write as _;

/// Escapes what is written through it into the JSON string being built.
pub struct Escaped<'a>(pub &'a mut String);

impl std::fmt::Write for Escaped<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        push_json_chars(self.0, s);
        Ok(())
    }
}

/// Appends `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    push_json_chars(out, s);
    out.push('"');
}

/// Appends `s` escaped for a JSON string, without the quotes.
fn push_json_chars(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    // Most strings (ids, paths, routes, messages) need no escaping: copied at once.
    let scan = plain_prefix(bytes);
    // Escapes are ASCII, so every slice below ends on a character boundary.
    let mut clean = 0;
    for (i, &b) in bytes.iter().enumerate().skip(scan) {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[clean..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        clean = i + 1;
    }
    out.push_str(&s[clean..]);
}

/// How many leading bytes of `bytes` a JSON string can hold as they are (no control
/// character, `"` or `\\`): found eight bytes at a time, then byte by byte.
pub fn plain_prefix(bytes: &[u8]) -> usize {
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let word = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        if needs_escape(word) {
            break;
        }
        at += 8;
    }
    at + bytes[at..]
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
        .unwrap_or(bytes.len() - at)
}

/// Whether any of the eight bytes is a control character, `"` or `\\` (bit tricks from
/// "Bit Twiddling Hacks": a byte below n, a byte equal to c).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * b'"' as u64);
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = word ^ (ONES * b'\\' as u64);
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (below_space | quote | backslash) & HIGHS != 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn strings_are_escaped_as_json() {
        for s in [
            "plain",
            "quote \" back \\ slash",
            "new\nline\ttab\r",
            "bell\u{7} nul\u{0}",
            "ünïcödé ✓",
            "",
            "a much longer line, with ünïcödé ✓ across words, then a \" quote and\ttab",
            "0123456789abcdef0123456789abcde\"",
            "€€€€€€€€€€€€\n€€€€€€\\",
        ] {
            let mut out = String::new();
            super::push_json_str(&mut out, s);
            assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s, "{out}");
            // Formatted values are escaped piece by piece as they are written.
            let mut out = String::from("\"");
            let _ = std::fmt::Write::write_fmt(
                &mut super::Escaped(&mut out),
                format_args!("<{s}|{}>", 42),
            );
            out.push('"');
            assert_eq!(
                serde_json::from_str::<String>(&out).unwrap(),
                format!("<{s}|42>")
            );
        }
    }
}

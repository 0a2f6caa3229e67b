//! Log lines for a person: `03:23:57.019 INFO  order placed  order=01a2… total=2900  ·4bf92f35`,
//! the level coloured. `tessera up` writes its processes' JSON lines this way in a terminal,
//! and `tessera logs` writes what the collector keeps this way; JSON stays the format on disk,
//! when the output is not a terminal, and with `--json`.

use serde_json::{Map, Value};

/// The fields a line shows otherwise (its time, level, who wrote it, its trace, its message).
const SHOWN: [&str; 8] = [
    "ts", "level", "service", "instance", "trace_id", "span_id", "msg", "target",
];

/// `line` for a person, if it is a JSON log line; `None` leaves it as it is.
pub fn render_line(line: &str, color: bool) -> Option<String> {
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(line) else {
        return None;
    };
    let ts = fields.get("ts").and_then(Value::as_str)?;
    // `2026-12-04T03:23:57.019Z` → `03:23:57.019`.
    let time = ts.get(11..23).unwrap_or(ts);
    let level = fields
        .get("level")
        .and_then(Value::as_str)
        .unwrap_or("INFO");
    let msg = fields.get("msg").and_then(Value::as_str).unwrap_or("");
    let trace = fields.get("trace_id").and_then(Value::as_str);
    Some(render(time, None, level, msg, &fields, trace, color))
}

/// `s` with control characters shown as escapes: what a process logs never drives the
/// reader's terminal.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

/// A line from its parts: `who` (a service) when the reader needs it.
pub fn render(
    time: &str,
    who: Option<&str>,
    level: &str,
    msg: &str,
    fields: &Map<String, Value>,
    trace: Option<&str>,
    color: bool,
) -> String {
    let mut out = String::with_capacity(128);
    out.push_str(time);
    out.push(' ');
    if let Some(who) = who {
        out.push_str(&format!("{:<14} ", printable(who)));
    }
    let level_text = format!("{level:<5}");
    if color {
        let code = match level {
            "ERROR" => "31;1",
            "WARN" => "33",
            "DEBUG" | "TRACE" => "2",
            _ => "32",
        };
        out.push_str(&format!("\x1b[{code}m{level_text}\x1b[0m"));
    } else {
        out.push_str(&level_text);
    }
    out.push(' ');
    out.push_str(&printable(msg));
    let mut first = true;
    for (key, value) in fields {
        if SHOWN.contains(&key.as_str()) {
            continue;
        }
        out.push_str(if first { "  " } else { " " });
        first = false;
        let value = match value {
            Value::String(s) if !s.contains(' ') && !s.is_empty() => s.clone(),
            other => other.to_string(),
        };
        let (key, value) = (printable(key), printable(&value));
        if color {
            out.push_str(&format!("\x1b[2m{key}=\x1b[0m{value}"));
        } else {
            out.push_str(&format!("{key}={value}"));
        }
    }
    if let Some(trace) = trace {
        let short = trace.get(..8).unwrap_or(trace);
        if color {
            out.push_str(&format!("  \x1b[2m·{short}\x1b[0m"));
        } else {
            out.push_str(&format!("  ·{short}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_reads_as_a_sentence_and_anything_else_is_left_alone() {
        let line = r#"{"ts":"2026-12-04T03:23:57.019Z","level":"WARN","service":"order","instance":"order-1","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","target":"shop_order","msg":"slow lookup","ms":12,"who":"a b"}"#;
        assert_eq!(
            render_line(line, false).unwrap(),
            r#"03:23:57.019 WARN  slow lookup  ms=12 who="a b"  ·4bf92f35"#
        );
        let colored = render_line(line, true).unwrap();
        assert!(colored.contains("\x1b[33mWARN"), "{colored:?}");
        assert_eq!(render_line("not json at all", false), None);
        assert_eq!(render_line("[1,2]", false), None);
        assert_eq!(render_line(r#"{"no":"ts"}"#, false), None);
        // What a process logs cannot drive the terminal.
        let hostile = concat!(
            r#"{"ts":"2026-12-04T03:23:57.019Z","level":"INFO","msg":"#,
            r#""\u001b[2Jcleared","k":"\u001b]0;x\u0007"}"#
        );
        let shown = render_line(hostile, false).unwrap();
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{shown:?}"
        );
        assert!(shown.contains("\\u{1b}[2Jcleared"), "{shown:?}");
    }
}

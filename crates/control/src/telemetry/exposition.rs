//! Reading Prometheus's text exposition format, as far as the collector needs it: each
//! sample's name, labels and value. Comments and lines that do not parse are skipped; a
//! scraped instance is a process of the system, but what it serves is still read as input
//! (no panic, no unbounded work: a line is read once, left to right).

/// One sample: `name{label="value",…} 1.5`.
#[derive(Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of `text` whose name is one of `names`.
pub fn samples(text: &str, names: &[&str]) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| names.iter().any(|n| l.starts_with(n)))
        .filter_map(sample)
        .filter(|s| names.contains(&s.name.as_str()))
        .collect()
}

/// One sample line, if it is one.
pub fn sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    if name_end == 0 {
        return None;
    }
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim();
            if key.is_empty() {
                return None;
            }
            rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '"' => break i,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    c => value.push(c),
                }
            };
            labels.push((key.to_string(), value));
            rest = &rest[end + 1..];
        }
    }
    // The value, then perhaps a timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_their_labels_and_anything_else_is_skipped() {
        let text = r#"# TYPE http_server_requests_total counter
http_server_requests_total{route="/api/orders/{id}",method="GET",status="200"} 42
http_server_request_duration_seconds_bucket{route="/a",method="GET",status="200",le="+Inf"} 7 1700000000
weird{route="a \"quoted\\ back\nslash\""} 1.5e3
garbage{route="never closed} 3
{route="no name"} 1
http_server_requests_total{route="/x"} not-a-number
other_total 9
"#;
        let got = samples(
            text,
            &[
                "http_server_requests_total",
                "http_server_request_duration_seconds_bucket",
                "weird",
            ],
        );
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].label("route"), Some("/api/orders/{id}"));
        assert_eq!((got[0].label("status"), got[0].value), (Some("200"), 42.0));
        assert_eq!(got[1].label("le"), Some("+Inf"));
        assert_eq!(got[1].value, 7.0);
        assert_eq!(got[2].label("route"), Some("a \"quoted\\ back\nslash\""));
        assert_eq!(got[2].value, 1500.0);
        for bad in [
            "",
            "{",
            "x{",
            "x{a}",
            "x{a=\"",
            "x{=\"v\"} 1",
            "x{a=\"v\"}",
            "x 1 2 3 4",
        ] {
            let _ = sample(bad); // never panics
        }
        assert_eq!(sample("x 1 2 3 4").map(|s| s.value), Some(1.0));
    }
}

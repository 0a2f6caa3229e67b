//! Telemetry out of a process: the spans it recorded (`tessera_trace::span`) and its log
//! lines (`tessera_trace::logs`, those that repeat no span), batched and sent off the hot path
//! as OTLP/HTTP (protobuf) to the control plane's collector and to any OpenTelemetry endpoint
//! the system names (Jaeger, Tempo, an OpenTelemetry Collector).
//!
//! Why not the OpenTelemetry SDK: a request's spans are recorded into a plain bounded buffer
//! with no tracing subscriber, context object or channel per span; the SDK's types are used
//! where they are the contract (`opentelemetry-proto`'s messages). The batch is sent every
//! [`Settings::every`]; a target that cannot take it is tried again with the next batch,
//! holding at most [`HELD_BYTES`] per target, so that a collector restart loses nothing short
//! and an unreachable one never grows the process.
//!
//! What a process exports and where comes from its environment (`tessera up` sets it from the
//! manifest's `[telemetry]`; `docs/observability.md`):
//! - `TESSERA_TRACE_SAMPLE`: the share of the traces this process starts that are recorded
//!   (0 to 1, default 1). A trace started elsewhere follows its `traceparent`'s flag.
//! - `TESSERA_OTLP_ENDPOINT`: further OTLP/HTTP endpoints (base URLs, comma-separated; spans
//!   go to `<base>/v1/traces`, log records to `<base>/v1/logs`), with `TESSERA_OTLP_HEADERS`
//!   (`name=value,…`) sent to them.
//! - `TESSERA_OTLP_COLLECTOR`: `false` sends nothing to the control plane's collector (spans
//!   and log records go to the endpoints above only).

mod export;
pub mod otlp;

pub use export::{HELD_BYTES, Handle, start};
pub use opentelemetry_proto as proto;

use std::time::Duration;

/// Who the spans are from: OTLP's resource.
#[derive(Clone, Debug)]
pub struct Resource {
    pub service: String,
    pub instance: String,
    pub version: String,
}

/// One place telemetry goes: an OTLP/HTTP base URL (spans to `<base>/v1/traces`, log records
/// to `<base>/v1/logs`) and the client that reaches it (with the process's credential and TLS
/// identity, for the control plane).
#[derive(Clone, Debug)]
pub struct Target {
    pub base: String,
    pub http: reqwest::Client,
}

impl Target {
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.base)
    }

    pub fn logs_url(&self) -> String {
        format!("{}/v1/logs", self.base)
    }
}

/// Where spans go, and how many.
#[derive(Debug)]
pub struct Settings {
    pub sample: f64,
    pub targets: Vec<Target>,
    /// How often a batch is sent.
    pub every: Duration,
}

impl Settings {
    /// From the environment (see the crate's docs), with `control` (the control plane's
    /// collector, when there is one) first.
    pub fn from_env(control: Option<Target>) -> Result<Settings, String> {
        Self::from_vars(control, |name| std::env::var(name).ok())
    }

    fn from_vars(
        control: Option<Target>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, String> {
        let sample = match var("TESSERA_TRACE_SAMPLE") {
            None => 1.0,
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    format!("TESSERA_TRACE_SAMPLE must be a share from 0 to 1, not {v:?}")
                })?,
        };
        let collector = match var("TESSERA_OTLP_COLLECTOR").as_deref().map(str::trim) {
            None | Some("true") => true,
            Some("false") => false,
            Some(v) => {
                return Err(format!(
                    "TESSERA_OTLP_COLLECTOR is true or false, not {v:?}"
                ));
            }
        };
        let mut targets: Vec<Target> = control.filter(|_| collector).into_iter().collect();
        if let Some(endpoints) = var("TESSERA_OTLP_ENDPOINT") {
            let mut headers = reqwest::header::HeaderMap::new();
            for pair in var("TESSERA_OTLP_HEADERS")
                .unwrap_or_default()
                .split(',')
                .filter(|p| !p.trim().is_empty())
            {
                let (name, value) = pair.split_once('=').ok_or_else(|| {
                    "TESSERA_OTLP_HEADERS holds name=value pairs, comma-separated".to_string()
                })?;
                let name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| {
                        format!("TESSERA_OTLP_HEADERS: {:?} is no header name", name.trim())
                    })?;
                let mut value =
                    reqwest::header::HeaderValue::from_str(value.trim()).map_err(|_| {
                        format!("TESSERA_OTLP_HEADERS: the value of {name} is not valid")
                    })?;
                value.set_sensitive(true);
                headers.insert(name, value);
            }
            let http = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .default_headers(headers)
                .build()
                .map_err(|e| format!("no HTTP client for OTLP: {e}"))?;
            for base in endpoints
                .split(',')
                .map(str::trim)
                .filter(|b| !b.is_empty())
            {
                if !(base.starts_with("http://") || base.starts_with("https://")) {
                    return Err(format!(
                        "TESSERA_OTLP_ENDPOINT names http:// or https:// URLs, not {base:?}"
                    ));
                }
                targets.push(Target {
                    base: base.trim_end_matches('/').to_string(),
                    http: http.clone(),
                });
            }
        }
        Ok(Settings {
            sample,
            targets,
            every: Duration::from_millis(200),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn settings_are_read_and_what_is_wrong_is_named() {
        let s = Settings::from_vars(None, vars(&[])).unwrap();
        assert_eq!((s.sample, s.targets.len()), (1.0, 0));
        let s = Settings::from_vars(
            None,
            vars(&[
                ("TESSERA_TRACE_SAMPLE", "0.25"),
                (
                    "TESSERA_OTLP_ENDPOINT",
                    "http://jaeger:4318/, https://tempo:4318",
                ),
                ("TESSERA_OTLP_HEADERS", "x-scope-orgid=shop"),
            ]),
        )
        .unwrap();
        assert_eq!(s.sample, 0.25);
        let urls: Vec<_> = s.targets.iter().map(|t| t.traces_url()).collect();
        assert_eq!(
            urls,
            [
                "http://jaeger:4318/v1/traces",
                "https://tempo:4318/v1/traces"
            ]
        );
        assert_eq!(s.targets[0].logs_url(), "http://jaeger:4318/v1/logs");
        // The control plane's collector first, unless told to keep out of it.
        let control = || {
            Some(Target {
                base: "https://control:7000".into(),
                http: reqwest::Client::new(),
            })
        };
        let endpoint = ("TESSERA_OTLP_ENDPOINT", "http://jaeger:4318");
        let s = Settings::from_vars(control(), vars(&[endpoint])).unwrap();
        let bases: Vec<_> = s.targets.iter().map(|t| t.base.as_str()).collect();
        assert_eq!(bases, ["https://control:7000", "http://jaeger:4318"]);
        let s = Settings::from_vars(
            control(),
            vars(&[endpoint, ("TESSERA_OTLP_COLLECTOR", "false")]),
        )
        .unwrap();
        let bases: Vec<_> = s.targets.iter().map(|t| t.base.as_str()).collect();
        assert_eq!(bases, ["http://jaeger:4318"]);
        for (bad, says) in [
            (("TESSERA_TRACE_SAMPLE", "2"), "from 0 to 1"),
            (("TESSERA_TRACE_SAMPLE", "all"), "from 0 to 1"),
            (("TESSERA_OTLP_ENDPOINT", "jaeger:4318"), "http://"),
            (("TESSERA_OTLP_HEADERS", "novalue"), "name=value"),
            (("TESSERA_OTLP_COLLECTOR", "no"), "true or false"),
        ] {
            let mut pairs = vec![bad];
            if bad.0 == "TESSERA_OTLP_HEADERS" {
                pairs.push(("TESSERA_OTLP_ENDPOINT", "http://x:1"));
            }
            let e = Settings::from_vars(None, vars(&pairs)).unwrap_err();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}

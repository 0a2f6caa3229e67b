//! Starting this process's exporter of spans and log lines (`tessera_telemetry`): to the control plane's
//! collector, as this process (its credential, over mutual TLS when the system has it), and
//! to the OTLP endpoints its environment names. The gateway starts it the same way.

use tessera_identity::Credential;
pub use tessera_telemetry::Handle;

/// Starts exporting this process's spans; `control` is the control plane's base URL and the
/// credential it is called with, when the process has one.
pub fn start(
    service: &str,
    instance: &str,
    version: &str,
    control: Option<(&str, &Credential)>,
) -> anyhow::Result<Handle> {
    let control = control.map(|(url, credential)| tessera_telemetry::Target {
        base: tessera_registry::control_base(url),
        http: tessera_registry::control_http(credential),
    });
    let settings = tessera_telemetry::Settings::from_env(control).map_err(anyhow::Error::msg)?;
    Ok(tessera_telemetry::start(
        tessera_telemetry::Resource {
            service: service.to_string(),
            instance: instance.to_string(),
            version: version.to_string(),
        },
        settings,
    ))
}

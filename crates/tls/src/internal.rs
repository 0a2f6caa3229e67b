//! This process's place in its system's mutual TLS: its identity, its certificate (reloaded
//! as the runner renews it), the system CA, and the configs every internal connection uses.
//!
//! It is the process's own, like its credential, so it is read once from the environment the
//! runner hands every process ([`from_env`]) and kept for the process ([`get`]); every
//! internal client (the HTTP/1.1 pool, the registry client) and server (a service, the
//! control plane) asks for it, and speaks plain HTTP when there is none (one machine, mutual
//! TLS off).
//!
//! | variable | value |
//! |---|---|
//! | `TESSERA_TLS_CERT`, `TESSERA_TLS_KEY` | this process's identity certificate and key (PEM) |
//! | `TESSERA_TLS_CA` | the system CA's certificate: the only root trusted inside |
//! | `TESSERA_TLS_IDENTITY` | the principal the certificate names (`service:order`, `gateway`, `control`, …) |
//! | `TESSERA_SYSTEM` | the system's name, part of every identity |

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::identity::{self, Identity};
use crate::{CertificateFiles, Certificates};

pub const CERT_ENV: &str = "TESSERA_TLS_CERT";
pub const KEY_ENV: &str = "TESSERA_TLS_KEY";
pub const CA_ENV: &str = "TESSERA_TLS_CA";
pub const IDENTITY_ENV: &str = "TESSERA_TLS_IDENTITY";

/// How often the certificate files are checked for a renewal.
const RELOAD: Duration = Duration::from_secs(5);

/// A process's mutual-TLS setup.
pub struct Internal {
    pub system: String,
    pub own: Identity,
    certificates: Arc<Certificates>,
    roots: Arc<RootCertStore>,
    client: Arc<ClientConfig>,
}

static INTERNAL: OnceLock<Option<Arc<Internal>>> = OnceLock::new();

/// This process's mutual-TLS setup, read from the environment on first use; None when the
/// system runs without it. A process whose variables are set but unreadable stops: it must
/// not fall back to plain text.
pub fn get() -> Option<&'static Arc<Internal>> {
    INTERNAL
        .get_or_init(|| match from_env() {
            Ok(internal) => internal.map(Arc::new),
            Err(e) => {
                eprintln!("mutual TLS: {e:#}");
                std::process::exit(2);
            }
        })
        .as_ref()
}

/// Sets this process's setup before anything asks for it (a process that makes its own
/// certificate rather than being handed one: the runner, an operator's command). Later
/// calls change nothing.
pub fn install(internal: Internal) {
    let _ = INTERNAL.set(Some(Arc::new(internal)));
}

/// `url` as this process must use it: with mutual TLS on, an `http://` URL of the system is
/// taken as its `https://` one (a credential never goes out in clear because a URL was set
/// by hand).
pub fn system_url(url: &str) -> std::borrow::Cow<'_, str> {
    match (get(), url.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}").into(),
        _ => url.into(),
    }
}

/// Reads the setup the runner handed this process, if any.
pub fn from_env() -> anyhow::Result<Option<Internal>> {
    let Ok(cert) = std::env::var(CERT_ENV) else {
        return Ok(None);
    };
    let var = |name: &str| {
        std::env::var(name).with_context(|| format!("{CERT_ENV} is set but {name} is not"))
    };
    let files = CertificateFiles {
        chain: cert.into(),
        key: var(KEY_ENV)?.into(),
    };
    let system = var("TESSERA_SYSTEM")?;
    let own = Identity::of_principal(&system, &var(IDENTITY_ENV)?);
    Internal::load(&system, own, &files, var(CA_ENV)?.as_ref()).map(Some)
}

impl Internal {
    pub fn load(
        system: &str,
        own: Identity,
        files: &CertificateFiles,
        ca: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let certificates = Arc::new(Certificates::load(
            std::slice::from_ref(files),
            crate::provider(),
        )?);
        if tokio::runtime::Handle::try_current().is_ok() {
            certificates.spawn_reload(RELOAD);
        }
        let roots = identity::roots(ca)?;
        let client = identity::client_config(certificates.clone(), roots.clone())?;
        Ok(Self {
            system: system.to_string(),
            own,
            certificates,
            roots,
            client,
        })
    }

    /// The config of this process's internal clients: connect with the identity meant to be
    /// reached as the server name ([`Identity::server_name`]).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// A client config that checks the server for `expected` whatever host name the URL
    /// holds (for clients such as reqwest, which verify the URL's host).
    pub fn client_config_for(&self, expected: &Identity) -> anyhow::Result<ClientConfig> {
        let verifier = pinned_verifier(self.roots.clone(), expected)?;
        let mut config = (*self.client).clone();
        config.dangerous().set_certificate_verifier(verifier);
        Ok(config)
    }

    /// The config of this process's internal servers, offering `alpn`.
    pub fn server_config(&self, alpn: &[&[u8]]) -> anyhow::Result<Arc<ServerConfig>> {
        identity::server_config(self.certificates.clone(), self.roots.clone(), alpn)
    }

    /// The identity of `principal` in this system.
    pub fn identity_of(&self, principal: &str) -> Identity {
        Identity::of_principal(&self.system, principal)
    }
}

/// A verifier of servers' certificates from the CA of `roots` for `expected`, whatever host
/// they were reached at.
pub fn pinned_verifier(
    roots: Arc<RootCertStore>,
    expected: &Identity,
) -> anyhow::Result<Arc<dyn ServerCertVerifier>> {
    let inner = WebPkiServerVerifier::builder_with_provider(roots, crate::provider()).build()?;
    Ok(Arc::new(Pinned {
        inner,
        expected: expected.server_name()?,
    }))
}

/// Verifies a server's certificate for a fixed identity, not for the host it was reached at.
#[derive(Debug)]
struct Pinned {
    inner: Arc<WebPkiServerVerifier>,
    expected: ServerName<'static>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _host: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.expected, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

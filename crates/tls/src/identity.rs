//! Mutual TLS inside a system: each process's certificate names who it is, issued by the
//! system's own CA; each side of a connection checks the other's.
//!
//! An identity is what the control plane's credentials already name (a service, the gateway,
//! the supervisor, an operator), plus the control plane itself. A certificate carries it twice:
//! as a SPIFFE-style URI (`spiffe://<system>/service/<name>`), for tools and other languages,
//! and as a DNS name (`<name>.service.<system>.tessera`), which is what is checked: a client
//! that calls `order` verifies the server's certificate for `order.service.<system>.tessera`
//! with the standard name check, so an instance holding another service's certificate (or one
//! from another CA) fails the handshake. A server requires a certificate from the system CA,
//! then learns the caller's identity by checking it against the identities it would accept
//! ([`peer_identity`]): a caller it would not accept is refused before any request is read.
//!
//! The runner issues each identity a certificate for [`IDENTITY_FOR`] and issues it again when
//! it is older than [`REISSUE_IDENTITY_AFTER`]; every process reads its files again when they
//! change (`Certificates::spawn_reload`), for its server and its client side alike: rotation
//! needs no restart.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};

use crate::Certificates;

/// How long an identity's certificate is valid…
pub const IDENTITY_FOR: Duration = Duration::from_secs(48 * 3600);
/// …and when the runner issues a new one.
pub const REISSUE_IDENTITY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Who a process of a system is, as its certificate says.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    system: String,
    /// `service/<name>`, or the role: `gateway`, `control`, `supervisor`, `admin`.
    path: String,
}

impl Identity {
    /// A service of `system`.
    pub fn service(system: &str, name: &str) -> Self {
        Self {
            system: system.to_string(),
            path: format!("service/{name}"),
        }
    }

    /// A platform role of `system`: `gateway`, `control`, `supervisor` or `admin`.
    pub fn role(system: &str, role: &str) -> Self {
        Self {
            system: system.to_string(),
            path: role.to_string(),
        }
    }

    /// The identity of a credential's principal (`service:<name>`, `gateway`, …).
    pub fn of_principal(system: &str, principal: &str) -> Self {
        match principal.strip_prefix("service:") {
            Some(name) => Self::service(system, name),
            None => Self::role(system, principal),
        }
    }

    /// The principal this identity speaks for, as credentials write it.
    pub fn principal(&self) -> String {
        match self.path.strip_prefix("service/") {
            Some(name) => format!("service:{name}"),
            None => self.path.clone(),
        }
    }

    /// The name checked in a handshake: `<name>.service.<system>.tessera`, `gateway.<system>.tessera`.
    pub fn dns_name(&self) -> String {
        match self.path.strip_prefix("service/") {
            Some(name) => format!("{name}.service.{}.tessera", self.system),
            None => format!("{}.{}.tessera", self.path, self.system),
        }
    }

    /// `spiffe://<system>/<path>`.
    pub fn uri(&self) -> String {
        format!("spiffe://{}/{}", self.system, self.path)
    }

    /// A file-name stem for its certificate: `service-order`, `gateway`.
    pub fn stem(&self) -> String {
        self.path.replace('/', "-")
    }

    pub fn server_name(&self) -> anyhow::Result<ServerName<'static>> {
        Ok(ServerName::try_from(self.dns_name())?)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// The system CA's certificates, as roots.
pub fn roots(ca: &std::path::Path) -> anyhow::Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in crate::certificates::read_chain(ca)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

/// The config of an internal server: presents `own`, requires a client certificate from the
/// CA of `roots` (which identity it names is the server's to check, [`peer_identity`]).
pub fn server_config(
    own: Arc<Certificates>,
    roots: Arc<RootCertStore>,
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<ServerConfig>> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, crate::provider()).build()?;
    let mut config = ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(crate::VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(own);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The config of an internal client: presents `own`, trusts only the CA of `roots` (the name
/// it checks is the identity it means to reach: connect with [`Identity::server_name`]).
pub fn client_config(
    own: Arc<Certificates>,
    roots: Arc<RootCertStore>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(crate::VERSIONS)?
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(ClientCert(own)));
    Ok(Arc::new(config))
}

/// The first of `candidates` the peer's certificate is valid for. The chain itself was
/// verified in the handshake.
pub fn peer_identity<'a>(
    peer: Option<&[CertificateDer<'_>]>,
    candidates: impl IntoIterator<Item = &'a Identity>,
) -> Option<&'a Identity> {
    let leaf = peer?.first()?;
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    candidates.into_iter().find(|identity| {
        ServerName::try_from(identity.dns_name())
            .is_ok_and(|name| cert.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

/// A client's own certificate, from files reloaded as they change.
#[derive(Debug)]
struct ClientCert(Arc<Certificates>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.default_pair()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Authority, CertificateFiles};

    fn issue(ca: &Authority, dir: &std::path::Path, id: &Identity) -> Arc<Certificates> {
        let files: CertificateFiles = ca.issue_identity(dir, id).unwrap();
        Arc::new(Certificates::load(&[files], crate::provider()).unwrap())
    }

    /// A TLS connection from `client` to a server presenting `server`, the client expecting
    /// `expect`; the identity the server found among `accepted`, or why it failed.
    async fn connect(
        roots: &Arc<RootCertStore>,
        server: Arc<Certificates>,
        client: Arc<Certificates>,
        expect: &Identity,
        accepted: &[Identity],
    ) -> Result<Option<Identity>, String> {
        let server_config = server_config(server, roots.clone(), &[]).unwrap();
        let client_config = client_config(client, roots.clone()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = accepted.to_vec();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = crate::TlsAcceptor::from(server_config)
                .accept(tcp)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(peer_identity(tls.get_ref().1.peer_certificates(), &accepted).cloned())
        });
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let client = crate::TlsConnector::from(client_config)
            .connect(expect.server_name().unwrap(), tcp)
            .await;
        let server = server.await.unwrap();
        client.map_err(|e| e.to_string())?;
        server
    }

    #[tokio::test]
    async fn each_side_checks_the_other_s_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(&dir.path().join("ca"), "system CA").unwrap();
        let roots = roots(&ca.certificate()).unwrap();
        let (order, catalog, gateway) = (
            Identity::service("shop", "order"),
            Identity::service("shop", "catalog"),
            Identity::role("shop", "gateway"),
        );
        let order_certs = issue(&ca, dir.path(), &order);
        let catalog_certs = issue(&ca, dir.path(), &catalog);
        let gateway_certs = issue(&ca, dir.path(), &gateway);
        assert_eq!(Identity::of_principal("shop", "service:order"), order);
        assert_eq!(order.principal(), "service:order");
        assert_eq!(gateway.dns_name(), "gateway.shop.tessera");

        // order calls catalog: each side finds the other.
        let found = connect(
            &roots,
            catalog_certs.clone(),
            order_certs.clone(),
            &catalog,
            &[gateway.clone(), order.clone()],
        )
        .await;
        assert_eq!(found, Ok(Some(order.clone())));
        // The server accepts only the gateway: order is not among them.
        let found = connect(
            &roots,
            catalog_certs.clone(),
            order_certs.clone(),
            &catalog,
            std::slice::from_ref(&gateway),
        )
        .await;
        assert_eq!(found, Ok(None));
        // A client that means to reach catalog refuses a server holding order's certificate.
        let wrong = connect(
            &roots,
            order_certs.clone(),
            gateway_certs.clone(),
            &catalog,
            std::slice::from_ref(&gateway),
        )
        .await;
        assert!(wrong.is_err(), "{wrong:?}");

        // A client with a certificate from another CA is refused by the server.
        let other = Authority::load_or_create(&dir.path().join("other-ca"), "other CA").unwrap();
        let stranger = issue(&other, &dir.path().join("other"), &gateway);
        let refused = connect(
            &roots,
            catalog_certs,
            stranger,
            &catalog,
            std::slice::from_ref(&gateway),
        )
        .await;
        assert!(refused.is_err(), "{refused:?}");
    }
}

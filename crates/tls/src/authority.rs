//! A certificate authority kept in a directory: its certificate (`ca.pem`) and key (`ca.key`,
//! readable by its owner only), created the first time it is asked for and reused after, so
//! that a browser or `curl --cacert` told once to trust it keeps trusting what it issues.
//! An operator's own CA (an intermediate of theirs) works the same: put its `ca.pem` and
//! `ca.key` there before the first start.
//!
//! `tessera up` uses one as the **development CA**: with `[gateway.tls]` on and no
//! certificate of the operator's, it issues the gateway a certificate for `localhost`,
//! `127.0.0.1` and `::1` (plus the listen address) that a laptop can trust with one command
//! (README). Issued certificates last 90 days and are issued again, at start, when older
//! than 60; the CA lasts ten years.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::CertificateFiles;

/// How long a certificate issued here is valid.
pub const ISSUED_FOR: Duration = Duration::from_secs(90 * 24 * 3600);
/// An issued certificate older than this is issued again.
pub const REISSUE_AFTER: Duration = Duration::from_secs(60 * 24 * 3600);
const CA_FOR: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub struct Authority {
    /// The CA certificate's own fields (its name, its key identifier), as read back from it:
    /// what an issued certificate names as its issuer.
    params: CertificateParams,
    key: KeyPair,
    /// The CA's certificate as issued (the PEM on disk).
    pem: String,
    dir: PathBuf,
}

impl Authority {
    /// The authority in `dir`, created there (with `name` as its common name) if it is not.
    pub fn load_or_create(dir: &Path, name: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        if cert_path.exists() != key_path.exists() {
            // Half an authority: making a new one would silently replace what clients trust.
            anyhow::bail!(
                "{} holds a CA certificate or its key but not both: restore the other, or remove both to make a new CA",
                dir.display()
            );
        }
        if cert_path.exists() {
            let key = std::fs::read_to_string(&key_path)
                .with_context(|| format!("reading {}", key_path.display()))?;
            let key = KeyPair::from_pem(&key)
                .with_context(|| format!("{} is not a key", key_path.display()))?;
            let pem = std::fs::read_to_string(&cert_path)
                .with_context(|| format!("reading {}", cert_path.display()))?;
            let params = CertificateParams::from_ca_cert_pem(&pem)
                .with_context(|| format!("{} is not a CA certificate", cert_path.display()))?;
            return Ok(Self {
                params,
                key,
                pem,
                dir: dir.to_path_buf(),
            });
        }
        let key = KeyPair::generate()?;
        let now = OffsetDateTime::now_utc();
        let mut params = ca_params(name);
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + CA_FOR;
        let cert = params.self_signed(&key)?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, cert.pem())
            .with_context(|| format!("writing {}", cert_path.display()))?;
        tracing::info!(ca = %cert_path.display(), "created a certificate authority");
        Ok(Self {
            params: CertificateParams::from_ca_cert_pem(&cert.pem())?,
            key,
            pem: cert.pem(),
            dir: dir.to_path_buf(),
        })
    }

    /// The CA certificate's file: what clients are told to trust.
    pub fn certificate(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate for `names` (DNS names or IP addresses) as `<stem>.pem` (leaf,
    /// then the CA) and `<stem>.key` in `dir`; kept as it is when it exists, is younger than
    /// [`REISSUE_AFTER`] and was issued for the same names.
    pub fn issue_server(
        &self,
        dir: &Path,
        stem: &str,
        names: &[String],
    ) -> anyhow::Result<CertificateFiles> {
        let sans = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.as_str().try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        let usage = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let validity = (ISSUED_FOR, REISSUE_AFTER);
        self.issue(dir, stem, names, sans, usage, validity)
    }

    /// A certificate naming `identity` (`identity.rs`), for both ends of a connection, as
    /// `<stem>.pem` and `<stem>.key` in `dir`; kept while younger than
    /// [`crate::identity::REISSUE_IDENTITY_AFTER`].
    pub fn issue_identity(
        &self,
        dir: &Path,
        identity: &crate::Identity,
    ) -> anyhow::Result<CertificateFiles> {
        let sans = vec![
            SanType::DnsName(identity.dns_name().try_into()?),
            SanType::URI(identity.uri().try_into()?),
        ];
        let usage = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let validity = (
            crate::identity::IDENTITY_FOR,
            crate::identity::REISSUE_IDENTITY_AFTER,
        );
        self.issue(
            dir,
            &identity.stem(),
            &[identity.dns_name()],
            sans,
            usage,
            validity,
        )
    }

    fn issue(
        &self,
        dir: &Path,
        stem: &str,
        names: &[String],
        sans: Vec<SanType>,
        usage: Vec<ExtendedKeyUsagePurpose>,
        (valid_for, reissue_after): (Duration, Duration),
    ) -> anyhow::Result<CertificateFiles> {
        let files = CertificateFiles {
            chain: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        };
        let names_file = dir.join(format!("{stem}.names"));
        let wanted = names.join("\n");
        let fresh = std::fs::metadata(&files.chain)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < reissue_after);
        // Kept only if young, for the same names, from this CA (its certificate ends the
        // chain), and whole: the key belongs to the chain (a write cut short is issued again).
        if fresh
            && std::fs::read_to_string(&names_file).is_ok_and(|n| n == wanted)
            && std::fs::read_to_string(&files.chain).is_ok_and(|c| c.ends_with(&self.pem))
            && crate::certificates::read_pair(&files, &crate::provider()).is_ok()
        {
            return Ok(files);
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map_or("tessera", |n| n.as_str()),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usage;
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + valid_for;
        let key = KeyPair::generate()?;
        // The issuer as rcgen needs it: the CA's own fields and key (rcgen signs with the key
        // and copies the issuer's name and key identifier; the signature of this stand-in
        // is never used).
        let issuer = self.params.clone().self_signed(&self.key)?;
        let cert = params.signed_by(&key, &issuer, &self.key)?;
        std::fs::create_dir_all(dir)?;
        // Each file whole or not at all (written aside, then renamed over the old one); a
        // reader between the two renames sees a key and chain that do not match, and keeps
        // the pair it has (`certificates.rs`).
        let (key_aside, chain_aside) = (aside(&files.key), aside(&files.chain));
        write_private(&key_aside, key.serialize_pem().as_bytes())?;
        let chain = format!("{}{}", cert.pem(), self.pem);
        std::fs::write(&chain_aside, chain)
            .with_context(|| format!("writing {}", chain_aside.display()))?;
        std::fs::rename(&key_aside, &files.key)?;
        std::fs::rename(&chain_aside, &files.chain)?;
        std::fs::write(&names_file, wanted)?;
        tracing::info!(certificate = %files.chain.display(), ?names, "issued a certificate");
        Ok(files)
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// Where a file is written before it is renamed into place: unique to this process, so two
/// issuers at once (the runner, an operator's command) do not write over each other.
fn aside(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.tmp", std::process::id()));
    PathBuf::from(name)
}

/// Writes a key readable by its owner only, from its creation.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_is_kept_and_its_certificates_verify_against_it() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path(), "Tessera test CA").unwrap();
        let pem = std::fs::read(ca.certificate()).unwrap();
        let again = Authority::load_or_create(dir.path(), "other name").unwrap();
        let half = dir.path().join("half");
        std::fs::create_dir(&half).unwrap();
        std::fs::copy(ca.certificate(), half.join("ca.pem")).unwrap();
        assert!(
            Authority::load_or_create(&half, "x").is_err(),
            "a CA without its key is not replaced"
        );
        assert_eq!(
            std::fs::read(again.certificate()).unwrap(),
            pem,
            "not recreated"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A certificate issued by the reloaded authority verifies against the first's root.
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let files = again.issue_server(dir.path(), "gw", &names).unwrap();
        let chain = crate::certificates::read_chain(&files.chain).unwrap();
        assert_eq!(chain.len(), 2);
        let root = crate::certificates::read_chain(&ca.certificate()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root[0].clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::provider(),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier as _;
        let now = rustls::pki_types::UnixTime::now();
        for name in ["localhost", "127.0.0.1"] {
            let name = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &name, &[], now)
                .unwrap();
        }
        let wrong = rustls::pki_types::ServerName::try_from("example.com").unwrap();
        assert!(
            verifier
                .verify_server_cert(&chain[0], &chain[1..], &wrong, &[], now)
                .is_err()
        );

        // Asked again for the same names, the certificate is kept; for others, reissued.
        let first = std::fs::read(&files.chain).unwrap();
        let kept = again.issue_server(dir.path(), "gw", &names).unwrap();
        assert_eq!(std::fs::read(&kept.chain).unwrap(), first);
        let more = vec!["localhost".to_string(), "shop.test".to_string()];
        let reissued = again.issue_server(dir.path(), "gw", &more).unwrap();
        assert_ne!(std::fs::read(&reissued.chain).unwrap(), first);
    }

    #[test]
    fn an_operator_s_own_ca_issues_what_verifies_against_it() {
        // A CA made elsewhere (openssl), with a name rcgen would not have chosen.
        let dir = tempfile::tempdir().unwrap();
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args(["-keyout", "ca.key", "-out", "ca.pem", "-days", "30"])
            .args(["-subj", "/O=Example Corp/OU=Platform/CN=Example Issuing CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .current_dir(dir.path())
            .output()
            .expect("openssl runs");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let ca = Authority::load_or_create(dir.path(), "unused").unwrap();
        let identity = crate::Identity::service("shop", "order");
        let files = ca
            .issue_identity(&dir.path().join("ids"), &identity)
            .unwrap();
        let chain = crate::certificates::read_chain(&files.chain).unwrap();
        let roots = crate::identity::roots(&dir.path().join("ca.pem")).unwrap();
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, crate::provider())
                .build()
                .unwrap();
        use rustls::client::danger::ServerCertVerifier as _;
        verifier
            .verify_server_cert(
                &chain[0],
                &chain[1..],
                &identity.server_name().unwrap(),
                &[],
                rustls::pki_types::UnixTime::now(),
            )
            .expect("issued under the operator's CA");
    }
}

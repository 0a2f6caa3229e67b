//! Certificate chains and keys from PEM files, chosen by SNI, reloaded when the files change.
//!
//! Operators renew certificates by replacing files (certbot, cert-manager, a cron job): the
//! gateway must pick the new ones up without a restart and without failing a handshake in
//! between. So each pair is polled (its files' modification time and length, once a second
//! by default) and re-read when either changes; the new pair replaces the old only when both
//! files parse and the key belongs to the chain's leaf. A file caught half-written fails that
//! check, the old pair keeps serving, and the next poll tries again.
//!
//! With several pairs, a client's SNI picks the first whose leaf is valid for that name
//! (wildcards included); no SNI, or no match, gets the first pair, the default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Where one certificate chain and its key are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM: the leaf first, then the intermediates.
    pub chain: PathBuf,
    /// PEM: PKCS#8, PKCS#1 or SEC1.
    pub key: PathBuf,
}

/// The server certificates of one listener: a `ResolvesServerCert` for rustls.
pub struct Certificates {
    provider: Arc<CryptoProvider>,
    pairs: RwLock<Vec<Pair>>,
}

struct Pair {
    files: CertificateFiles,
    stamp: Stamp,
    key: Arc<CertifiedKey>,
}

/// What a pair's files looked like when read: a change in either means a new file.
type Stamp = [(Option<SystemTime>, u64); 2];

impl Certificates {
    /// Reads every pair; any that cannot be read is an error (a listener must not start with
    /// less than it was configured with).
    pub fn load(files: &[CertificateFiles], provider: Arc<CryptoProvider>) -> anyhow::Result<Self> {
        if files.is_empty() {
            bail!("no certificate configured");
        }
        let pairs = files
            .iter()
            .map(|f| {
                let stamp = stamp(f);
                let key = read_pair(f, &provider)?;
                Ok(Pair {
                    files: f.clone(),
                    stamp,
                    key,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            provider,
            pairs: RwLock::new(pairs),
        })
    }

    /// Re-reads the pairs whose files changed since they were read; returns how many were
    /// replaced. A pair that fails to read is kept as it was (and logged).
    pub fn reload(&self) -> usize {
        let changed: Vec<(usize, CertificateFiles, Stamp)> = {
            let pairs = self.pairs.read().unwrap_or_else(|p| p.into_inner());
            pairs
                .iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let now = stamp(&p.files);
                    (now != p.stamp).then(|| (i, p.files.clone(), now))
                })
                .collect()
        };
        let mut replaced = 0;
        for (i, files, now) in changed {
            match read_pair(&files, &self.provider) {
                Ok(key) => {
                    let mut pairs = self.pairs.write().unwrap_or_else(|p| p.into_inner());
                    pairs[i].key = key;
                    pairs[i].stamp = now;
                    replaced += 1;
                    tracing::info!(chain = %files.chain.display(), "certificate reloaded");
                }
                // Most likely caught mid-write: the next poll sees it finished.
                Err(e) => tracing::warn!(
                    chain = %files.chain.display(),
                    error = format!("{e:#}"),
                    "certificate changed but cannot be used yet; the old one is kept"
                ),
            }
        }
        replaced
    }

    /// Polls the files every `every` for as long as the resolver is in use.
    pub fn spawn_reload(self: &Arc<Self>, every: Duration) {
        let this: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(this) = this.upgrade() else { break };
                // Reading files blocks: off the runtime's workers.
                if tokio::task::spawn_blocking(move || this.reload())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }

    /// The first pair: the default, and a client's only one.
    pub fn default_pair(&self) -> Option<Arc<CertifiedKey>> {
        let pairs = self.pairs.read().unwrap_or_else(|p| p.into_inner());
        pairs.first().map(|p| p.key.clone())
    }

    /// The pair for `sni`: the first whose leaf is valid for it, else the first.
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let pairs = self.pairs.read().unwrap_or_else(|p| p.into_inner());
        if pairs.len() > 1
            && let Some(name) = sni.and_then(|s| ServerName::try_from(s).ok())
        {
            for pair in pairs.iter() {
                let Some(leaf) = pair.key.cert.first() else {
                    continue;
                };
                if webpki_valid_for(leaf, &name) {
                    return Some(pair.key.clone());
                }
            }
        }
        drop(pairs);
        self.default_pair()
    }
}

fn webpki_valid_for(leaf: &CertificateDer<'_>, name: &ServerName<'_>) -> bool {
    webpki::EndEntityCert::try_from(leaf)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs = self.pairs.read().unwrap_or_else(|p| p.into_inner());
        f.debug_list()
            .entries(pairs.iter().map(|p| &p.files.chain))
            .finish()
    }
}

fn stamp(files: &CertificateFiles) -> Stamp {
    let one = |p: &Path| std::fs::metadata(p).map_or((None, 0), |m| (m.modified().ok(), m.len()));
    [one(&files.chain), one(&files.key)]
}

/// Reads a chain and its key and checks that they belong together.
pub fn read_pair(
    files: &CertificateFiles,
    provider: &CryptoProvider,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = read_chain(&files.chain)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the key {}", files.key.display()))?;
    let key = CertifiedKey::from_der(chain, key, provider)
        .with_context(|| format!("{} and {}", files.chain.display(), files.key.display()))?;
    Ok(Arc::new(key))
}

/// Reads the certificates of a PEM file, at least one.
pub fn read_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the certificates {}", path.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(chain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Authority;

    fn issue(dir: &Path, ca: &Authority, stem: &str, names: &[&str]) -> CertificateFiles {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        ca.issue_server(dir, stem, &names).unwrap()
    }

    fn leaf(key: &CertifiedKey) -> Vec<u8> {
        key.cert[0].to_vec()
    }

    #[test]
    fn sni_picks_the_pair_valid_for_the_name_and_defaults_to_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path(), "test CA").unwrap();
        let a = issue(dir.path(), &ca, "a", &["a.example", "localhost"]);
        let b = issue(dir.path(), &ca, "b", &["*.b.example"]);
        let certs = Certificates::load(&[a, b.clone()], crate::provider()).unwrap();
        let first = leaf(&certs.pick(None).unwrap());
        assert_eq!(leaf(&certs.pick(Some("a.example")).unwrap()), first);
        assert_eq!(leaf(&certs.pick(Some("unknown.example")).unwrap()), first);
        let second = leaf(&certs.pick(Some("shop.b.example")).unwrap());
        assert_ne!(second, first);
        assert_eq!(second, read_chain(&b.chain).unwrap()[0].to_vec());
    }

    #[test]
    fn a_changed_pair_is_reloaded_and_a_half_written_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path(), "test CA").unwrap();
        let files = issue(dir.path(), &ca, "gw", &["localhost"]);
        let certs = Certificates::load(std::slice::from_ref(&files), crate::provider()).unwrap();
        let before = leaf(&certs.pick(None).unwrap());
        assert_eq!(certs.reload(), 0, "nothing changed");

        // A new chain whose key is not written yet: it does not match, the old pair stays.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let new = issue(&other, &ca, "gw", &["localhost"]);
        std::fs::copy(&new.chain, &files.chain).unwrap();
        assert_eq!(certs.reload(), 0);
        assert_eq!(leaf(&certs.pick(None).unwrap()), before);

        // Then the key: the new pair serves.
        std::fs::copy(&new.key, &files.key).unwrap();
        assert_eq!(certs.reload(), 1);
        let after = leaf(&certs.pick(None).unwrap());
        assert_ne!(after, before);
        assert_eq!(after, read_chain(&new.chain).unwrap()[0].to_vec());
    }

    #[test]
    fn missing_or_mismatched_files_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path(), "test CA").unwrap();
        let a = issue(dir.path(), &ca, "a", &["localhost"]);
        let b = issue(dir.path(), &ca, "b", &["localhost"]);
        let crossed = CertificateFiles {
            chain: a.chain.clone(),
            key: b.key.clone(),
        };
        assert!(Certificates::load(&[crossed], crate::provider()).is_err());
        let missing = CertificateFiles {
            chain: dir.path().join("nope.pem"),
            key: a.key,
        };
        let e = Certificates::load(&[missing], crate::provider()).unwrap_err();
        assert!(format!("{e:#}").contains("nope.pem"), "{e:#}");
        assert!(Certificates::load(&[], crate::provider()).is_err());
    }
}

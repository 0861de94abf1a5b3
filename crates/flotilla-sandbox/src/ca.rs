//! The per-daemon certificate authority the egress proxy uses to terminate
//! TLS for the hosts an [`crate::hook::EgressHook`] asks to see.
//!
//! [`CertAuthority::load_or_create`] keeps the CA in a directory (`ca.pem`,
//! mode 0644, and `ca.key`, mode 0600): minted once, reused on later starts,
//! so sandboxes keep trusting the same certificate. A corrupt or mismatched
//! pair is an error naming the file; it is never silently replaced (tools
//! that trusted the old CA would break in confusing ways). Leaf certificates
//! ([`CertAuthority::leaf_for`]) are minted on demand, one per host, and
//! cached in memory.
//!
//! The sandbox trusts the CA through a bundle file
//! ([`CertAuthority::write_bundle`]: the CA followed by the system roots)
//! that `SSL_CERT_FILE` and friends point at ([`crate::spec::proxy_env_with_ca`]).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;

/// The CA certificate's common name.
pub const CA_COMMON_NAME: &str = "flotilla sandbox CA";
/// The CA certificate's file name in the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA key's file name in the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Leaf certificates kept in memory at once; the cache is emptied when full.
const LEAF_CACHE_SIZE: usize = 1024;
/// How long a cached leaf is reused before a fresh one is minted (leaves are
/// valid for [`LEAF_VALIDITY`]).
const LEAF_REUSE: Duration = Duration::from_secs(24 * 3600);
/// A leaf's validity after it is minted.
const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// A leaf is valid from this long before it is minted (clock skew).
const LEAF_BACKDATE: Duration = Duration::from_secs(3600);
/// The CA's validity (about ten years).
const CA_VALIDITY: Duration = Duration::from_secs(3650 * 24 * 3600);
/// System trust bundles, the first readable one is appended by
/// [`CertAuthority::write_bundle`].
const SYSTEM_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Errors loading, creating or using the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file or directory could not be read, written or created.
    #[error("sandbox CA: {action} {path}: {source}")]
    Io {
        /// What was being done ("reading", "creating", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A CA file exists but cannot be used. It is left as it is.
    #[error(
        "sandbox CA: {path} is unusable: {problem}. It is left untouched; to start over with a \
         new CA, remove both {CA_CERT_FILE} and {CA_KEY_FILE} from {dir} (sandboxes then trust \
         the new CA from their next start)",
        dir = .path.parent().map(|p| p.display().to_string()).unwrap_or_default()
    )]
    Corrupt {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// Only one of the two CA files exists.
    #[error(
        "sandbox CA: {present} exists but {missing} does not; restore {missing}, or remove \
         {present} to start over with a new CA"
    )]
    Incomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// A certificate could not be minted.
    #[error("sandbox CA: cannot mint a certificate for {host:?}: {problem}")]
    Mint {
        /// The host (or "the CA itself").
        host: String,
        /// What failed.
        problem: String,
    },
}

/// The per-daemon CA: its certificate and key, and the leaves minted so far.
pub struct CertAuthority {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// One key shared by every leaf (minting stays cheap; the leaves live
    /// only in this process).
    leaf_key: KeyPair,
    leaf_signing_key: Arc<dyn rustls::sign::SigningKey>,
    leaves: Mutex<HashMap<String, (Instant, Arc<CertifiedKey>)>>,
    cert_path: PathBuf,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CaError + 'a {
    move |source| CaError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The CA's parameters; also the issuer's (its name and key identifier
/// method must be the same when the CA is loaded again).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    name.push(DnType::OrganizationName, "flotilla");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// A serial number unique within this CA: the time in nanoseconds and a
/// process-wide counter (positive: the top byte is zero).
fn serial() -> SerialNumber {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut bytes = [0u8; 17];
    bytes[1..9].copy_from_slice(&nanos.to_be_bytes());
    bytes[9..].copy_from_slice(&count.to_be_bytes());
    bytes[1] &= 0x7f;
    SerialNumber::from_slice(&bytes[1..])
}

fn offset_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

impl CertAuthority {
    /// Loads the CA from `dir` (`ca.pem` and `ca.key`), or creates it there
    /// when neither file exists (`dir` is created with mode 0700 if
    /// missing). A file that cannot be parsed, a key that does not match the
    /// certificate, or only one of the two files is an error naming the
    /// file; nothing is replaced.
    pub fn load_or_create(dir: &Path) -> Result<CertAuthority, CaError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(&cert_path, &key_path),
            (false, false) => Self::create(dir, &cert_path, &key_path),
            (true, false) => Err(CaError::Incomplete {
                present: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(CaError::Incomplete {
                present: key_path,
                missing: cert_path,
            }),
        }
    }

    fn create(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<CertAuthority, CaError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("creating the directory", dir))?;
        }
        let mint = |e: rcgen::Error| CaError::Mint {
            host: "the CA itself".into(),
            problem: e.to_string(),
        };
        let key = KeyPair::generate().map_err(mint)?;
        let mut params = ca_params();
        let now = offset_now();
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(serial());
        let cert = params.self_signed(&key).map_err(mint)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();

        // The key first, created 0600 and never over an existing file.
        let write = |path: &Path, mode: u32, data: &str| -> Result<(), CaError> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
                .map_err(io_err("creating", path))?;
            file.write_all(data.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io_err("writing", path))
        };
        write(key_path, 0o600, &key_pem)?;
        if let Err(e) = write(cert_path, 0o644, &cert_pem) {
            let _ = std::fs::remove_file(key_path);
            return Err(e);
        }
        tracing::info!(path = %cert_path.display(), "created the sandbox CA");
        Self::assemble(cert_pem, key, cert_path, key_path)
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<CertAuthority, CaError> {
        let cert_pem = std::fs::read_to_string(cert_path).map_err(io_err("reading", cert_path))?;
        let key_pem = std::fs::read_to_string(key_path).map_err(io_err("reading", key_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| CaError::Corrupt {
            path: key_path.to_path_buf(),
            problem: format!("not a PEM private key rcgen can use ({e})"),
        })?;
        Self::assemble(cert_pem, key, cert_path, key_path)
    }

    /// Builds the CA from its certificate and key, checking that they belong
    /// together and that a leaf it mints verifies against the certificate.
    fn assemble(
        cert_pem: String,
        key: KeyPair,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<CertAuthority, CaError> {
        let corrupt_cert = |problem: String| CaError::Corrupt {
            path: cert_path.to_path_buf(),
            problem,
        };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| corrupt_cert(format!("not a PEM certificate ({e})")))?;
        let key_der =
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).map_err(|e| {
                CaError::Corrupt {
                    path: key_path.to_path_buf(),
                    problem: format!("not a PEM private key ({e})"),
                }
            })?;
        let provider = provider();
        CertifiedKey::from_der(vec![cert_der.clone()], key_der, &provider).map_err(|e| {
            CaError::Corrupt {
                path: key_path.to_path_buf(),
                problem: format!(
                    "the key does not match the certificate in {} ({e})",
                    cert_path.display()
                ),
            }
        })?;

        let mint = |e: rcgen::Error| CaError::Mint {
            host: "leaves".into(),
            problem: e.to_string(),
        };
        let leaf_key = KeyPair::generate().map_err(mint)?;
        let leaf_der =
            PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).map_err(|e| {
                CaError::Mint {
                    host: "leaves".into(),
                    problem: e.to_string(),
                }
            })?;
        let leaf_signing_key = provider
            .key_provider
            .load_private_key(leaf_der)
            .map_err(|e| CaError::Mint {
                host: "leaves".into(),
                problem: e.to_string(),
            })?;
        let ca = CertAuthority {
            issuer: Issuer::new(ca_params(), key),
            cert_pem,
            cert_der,
            leaf_key,
            leaf_signing_key,
            leaves: Mutex::new(HashMap::new()),
            cert_path: cert_path.to_path_buf(),
        };
        ca.self_check().map_err(|problem| {
            corrupt_cert(format!("it is not a flotilla sandbox CA: {problem}"))
        })?;
        Ok(ca)
    }

    /// Mints a leaf and verifies it against the CA certificate, as a client
    /// would: catches a certificate whose name or constraints do not fit.
    fn self_check(&self) -> Result<(), String> {
        let host = "ca-check.flotilla.invalid";
        let leaf = self.mint(host).map_err(|e| e.to_string())?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert_der.clone())
            .map_err(|e| format!("not usable as a trust anchor ({e})"))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(provider()),
        )
        .build()
        .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(host).map_err(|e| e.to_string())?;
        verifier
            .verify_server_cert(&leaf.cert[0], &[], &name, &[], UnixTime::now())
            .map_err(|e| format!("a certificate it signs does not verify ({e})"))?;
        Ok(())
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// A leaf certificate for `host` (a DNS name, or an IP literal, which
    /// gets an IP SAN), signed by the CA, valid from an hour ago for 30
    /// days; the chain holds the leaf and the CA. Cached per host.
    pub fn leaf_for(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let key = host.to_ascii_lowercase();
        if let Ok(cache) = self.leaves.lock() {
            if let Some((minted, leaf)) = cache.get(&key) {
                if minted.elapsed() < LEAF_REUSE {
                    return Ok(leaf.clone());
                }
            }
        }
        let leaf = Arc::new(self.mint(&key)?);
        if let Ok(mut cache) = self.leaves.lock() {
            if cache.len() >= LEAF_CACHE_SIZE {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), leaf.clone()));
        }
        Ok(leaf)
    }

    fn mint(&self, host: &str) -> Result<CertifiedKey, CaError> {
        let mint_err = |problem: String| CaError::Mint {
            host: host.to_string(),
            problem,
        };
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let san = match bare.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                ServerName::try_from(bare)
                    .map_err(|e| mint_err(format!("not a valid host name ({e})")))?
                    .to_str()
                    .into_owned()
                    .try_into()
                    .map_err(|e: rcgen::Error| mint_err(e.to_string()))?,
            ),
        };
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, bare);
        params.distinguished_name = name;
        params.subject_alt_names = vec![san];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = offset_now();
        params.not_before = now - LEAF_BACKDATE;
        params.not_after = now + LEAF_VALIDITY;
        params.serial_number = Some(serial());
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .map_err(|e| mint_err(e.to_string()))?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.cert_der.clone()],
            self.leaf_signing_key.clone(),
        ))
    }

    /// Writes the CA certificate followed by the first readable system
    /// trust bundle (`/etc/ssl/certs/ca-certificates.crt`,
    /// `/etc/pki/tls/certs/ca-bundle.crt`, `/etc/ssl/cert.pem`) to `path`
    /// (mode 0644, replaced atomically), so a tool pointed at it with
    /// `SSL_CERT_FILE` trusts both intercepted hosts and the ones tunnelled
    /// untouched.
    pub fn write_bundle(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut bundle = self.cert_pem.clone();
        if !bundle.ends_with('\n') {
            bundle.push('\n');
        }
        match SYSTEM_BUNDLES
            .iter()
            .find_map(|p| std::fs::read_to_string(p).ok())
        {
            Some(system) => bundle.push_str(&system),
            None => tracing::warn!(
                "no system trust bundle found ({}); the sandbox CA bundle holds only the \
                 flotilla CA, so hosts tunnelled untouched will not verify inside the sandbox",
                SYSTEM_BUNDLES.join(", ")
            ),
        }
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "ca-bundle.pem".into());
        let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .open(&tmp)?;
            file.write_all(bundle.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn leaves_are_cached_and_cover_ips() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::load_or_create(&dir.path().join("ca")).unwrap();
        let mode = std::fs::metadata(dir.path().join("ca"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let a = ca.leaf_for("Example.com").unwrap();
        let b = ca.leaf_for("example.com").unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.cert.len(), 2);
        ca.leaf_for("127.0.0.1").unwrap();
        ca.leaf_for("::1").unwrap();
        assert!(ca.leaf_for("bad host!").is_err());
    }

    #[test]
    fn bundle_starts_with_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::load_or_create(dir.path()).unwrap();
        let path = dir.path().join("bundle.pem");
        ca.write_bundle(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(ca.cert_pem()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn a_missing_half_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        CertAuthority::load_or_create(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
        let err = CertAuthority::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, CaError::Incomplete { .. }), "{err}");
        assert!(dir.path().join(CA_KEY_FILE).exists());
    }

    #[test]
    fn a_foreign_key_is_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        CertAuthority::load_or_create(dir.path()).unwrap();
        let other = KeyPair::generate().unwrap();
        std::fs::write(dir.path().join(CA_KEY_FILE), other.serialize_pem()).unwrap();
        let err = CertAuthority::load_or_create(dir.path()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("does not match"), "{text}");
        assert!(text.contains(CA_KEY_FILE), "{text}");
    }
}

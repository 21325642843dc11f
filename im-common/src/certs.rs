//! The cluster's certificates: one CA, and one certificate per [`Role`].
//!
//! A role's certificate names the role as a DNS subjectAltName ([`Role::certificate_name`]):
//! `mpim.UserService` for `im-user`, `mpim.Gateway` for gateways. A client checks that the
//! instance it dialled holds the certificate of the service it looked up, and a service
//! takes the caller's role from the name in the caller's certificate. Certificates do not
//! name hosts: every instance of a role holds the same one, so a host joins the cluster with
//! files copied to it, and nothing depends on addresses.
//!
//! Files in the certificate directory (what `mpim-certs` writes):
//!
//! ```text
//! ca.pem, ca.key          the cluster CA (the key stays where certificates are issued)
//! <role>.pem, <role>.key  gateway, user, presence, message, group
//! ```
//!
//! Every file is replaced atomically (written aside, then renamed), so a process that
//! reloads its certificate never reads half a file; keys are readable by their owner only.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::identity::Role;

/// The subject of the cluster CA; a reissued leaf names it as its issuer, so it must never
/// change for a given CA key.
const CA_NAME: &str = "MPIM cluster CA";
/// Default lifetime of a role certificate.
pub const DEFAULT_DAYS: u32 = 397;
/// Lifetime of the CA.
const CA_DAYS: u32 = 3650;

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// A key or certificate could not be made or parsed.
    #[error("{what}: {source}")]
    Crypto {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: rcgen::Error,
    },
}

/// The paths of one role's files in `dir`.
pub fn files(dir: &Path, role: Role) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{}.pem", role.name())),
        dir.join(format!("{}.key", role.name())),
    )
}

/// Makes the CA in `dir` unless one is there; returns whether it made one.
///
/// # Errors
/// [`CertError`] when a file cannot be written or a key made.
pub fn ensure_ca(dir: &Path) -> Result<bool, CertError> {
    let key_path = dir.join("ca.key");
    if key_path.exists() {
        return Ok(false);
    }
    std::fs::create_dir_all(dir).map_err(|source| io(dir, source))?;
    let key = KeyPair::generate().map_err(|source| crypto("make the CA key", source))?;
    let params = ca_params(CA_DAYS);
    let cert = params
        .self_signed(&key)
        .map_err(|source| crypto("sign the CA", source))?;
    write(&dir.join("ca.pem"), cert.pem().as_bytes(), 0o644)?;
    write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    Ok(true)
}

/// Issues `role`'s certificate, valid for `days`, signed by the CA in `dir`, replacing any
/// earlier one (a rotation: processes pick the new files up by themselves).
///
/// # Errors
/// [`CertError`] when the CA cannot be read or a file written.
pub fn issue(dir: &Path, role: Role, days: u32) -> Result<(), CertError> {
    let key_path = dir.join("ca.key");
    let pem = std::fs::read_to_string(&key_path).map_err(|source| io(&key_path, source))?;
    let ca_key = KeyPair::from_pem(&pem).map_err(|source| crypto("read ca.key", source))?;
    let issuer = Issuer::new(ca_params(CA_DAYS), ca_key);
    let mut params = CertificateParams::new(vec![role.certificate_name().to_owned()])
        .map_err(|source| crypto("name the certificate", source))?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, role.certificate_name());
    params.distinguished_name = subject;
    // Services are servers to the gateway and clients of nothing yet; the gateway is a
    // client. Both usages on every role keep one certificate per role whatever it dials.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch();
    params.not_before = now - std::time::Duration::from_secs(300);
    params.not_after = now + std::time::Duration::from_secs(u64::from(days) * 86_400);
    let key = KeyPair::generate().map_err(|source| crypto("make a key", source))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|source| crypto("sign the certificate", source))?;
    let (cert_path, key_path) = files(dir, role);
    // Key first: a process that sees the new certificate beside the old key fails to load
    // the pair and keeps the old one until the next look.
    write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

fn ca_params(days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = subject;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch();
    params.not_before = now - std::time::Duration::from_secs(300);
    params.not_after = now + std::time::Duration::from_secs(u64::from(days) * 86_400);
    params
}

fn since_epoch() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Writes `bytes` to `path` through a file beside it and a rename.
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let aside = path.with_extension("tmp");
    let _ = std::fs::remove_file(&aside);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&aside)
        .map_err(|source| io(&aside, source))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|source| io(&aside, source))?;
    std::fs::rename(&aside, path).map_err(|source| io(path, source))
}

fn io(path: &Path, source: std::io::Error) -> CertError {
    CertError::Io {
        path: path.to_owned(),
        source,
    }
}

fn crypto(what: &str, source: rcgen::Error) -> CertError {
    CertError::Crypto {
        what: what.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_is_made_once_and_roles_are_issued_and_reissued() {
        let dir = std::env::temp_dir().join(format!("mpim-certs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(ensure_ca(&dir).unwrap());
        let ca = std::fs::read(dir.join("ca.pem")).unwrap();
        assert!(!ensure_ca(&dir).unwrap(), "an existing CA is kept");
        assert_eq!(std::fs::read(dir.join("ca.pem")).unwrap(), ca);
        issue(&dir, Role::User, 1).unwrap();
        let (cert, key) = files(&dir, Role::User);
        let first = std::fs::read(&cert).unwrap();
        issue(&dir, Role::User, 1).unwrap();
        assert_ne!(std::fs::read(&cert).unwrap(), first, "reissued");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "keys are the owner's only: {mode:o}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn issuing_without_a_ca_names_the_file() {
        let dir = std::env::temp_dir().join("mpim-certs-none");
        let err = issue(&dir, Role::Gateway, 1).unwrap_err();
        assert!(err.to_string().contains("ca.key"), "{err}");
    }
}

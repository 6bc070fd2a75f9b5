//! `chitty cert`: a development CA and node certificates (rcgen), enough
//! to run a TLS cluster without other tools.
//!
//! * `ca` makes `ca.pem` (the CA certificate, which clients and nodes get
//!   as `--tls-ca`) and `ca-key.pem` (its key, which signs node
//!   certificates and stays with whoever makes them).
//! * `node` makes `NAME.pem` and `NAME-key.pem`, a node's certificate and
//!   key, signed by the CA, for the names and addresses the node is dialled
//!   at (`--san`), usable as a server and as a client certificate (the mesh
//!   is mutual TLS).
//!
//! Keys are ECDSA P-256, written with mode 0600. No file is overwritten
//! without `--force`. The node command signs with a CA made by `ca`: it
//! rebuilds the CA's name from [`CA_NAME`] and checks that the certificate
//! it made verifies against `ca.pem`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::ServerCertVerifier;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// The common name of a CA made by `chitty cert ca`.
pub const CA_NAME: &str = "Chitty development CA";
/// Years a CA and a node certificate are valid.
const CA_YEARS: i32 = 10;
const NODE_YEARS: i32 = 5;

/// The file names in a CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// The current year, and a validity from the start of it for `years`.
fn validity(params: &mut CertificateParams, years: i32) {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    // Close enough: a year of 365.2425 days; a day of slack either way.
    let year = 1970 + (secs / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 12, 31);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

/// The parameters of a CA made here: its name is all a node certificate
/// takes from them (with the key, which identifies it).
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Writes `contents` to `path`: refused if it exists, unless `force`;
/// `secret` files get mode 0600.
fn write_file(path: &Path, contents: &str, secret: bool, force: bool) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!(
            "{} exists: remove it or pass --force to overwrite it",
            path.display()
        ),
        _ => format!("cannot write {}: {e}", path.display()),
    })?;
    // An existing file keeps its mode when overwritten: set it.
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {}: {e}", path.display()))?;
    }
    file.write_all(contents.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Checks that none of `paths` exists (unless `force`), before any is
/// written, so that a refusal leaves nothing half made.
fn check_free(paths: &[&Path], force: bool) -> Result<(), String> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(format!(
            "{} exists: remove it or pass --force to overwrite it",
            p.display()
        )),
        None => Ok(()),
    }
}

/// Makes a CA in `dir` (created if missing): `ca.pem` and `ca-key.pem`.
/// Returns the two paths.
pub fn make_ca(dir: &Path, force: bool) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    check_free(&[&cert_path, &key_path], force)?;
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params = ca_params();
    validity(&mut params, CA_YEARS);
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("cannot make the CA certificate: {e}"))?;
    write_file(&key_path, &key.serialize_pem(), true, force)?;
    write_file(&cert_path, &cert.pem(), false, force)?;
    Ok((cert_path, key_path))
}

/// Makes `NAME.pem` and `NAME-key.pem` in `out` (created if missing): a
/// node certificate for `sans` (IP addresses or DNS names), signed by the
/// CA in `ca_dir`. Returns the two paths.
pub fn make_node(
    ca_dir: &Path,
    name: &str,
    sans: &[String],
    out: &Path,
    force: bool,
) -> Result<(PathBuf, PathBuf), String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || name.starts_with('.')
    {
        return Err(format!(
            "--name {name:?}: use letters, digits, '-', '_' and '.' (it names the files)"
        ));
    }
    if sans.is_empty() {
        return Err("give at least one --san (an address or name the node is dialled at)".into());
    }
    let ca_cert_path = ca_dir.join(CA_CERT_FILE);
    let ca_key_path = ca_dir.join(CA_KEY_FILE);
    let ca_pem = std::fs::read(&ca_cert_path)
        .map_err(|e| format!("cannot read {}: {e}", ca_cert_path.display()))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path)
        .map_err(|e| format!("cannot read {}: {e}", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| format!("{}: not a private key: {e}", ca_key_path.display()))?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}-key.pem"));
    check_free(&[&cert_path, &key_path], force)?;

    let mut params = CertificateParams::new(sans.to_vec())
        .map_err(|e| format!("--san: not an address or a DNS name: {e}"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, NODE_YEARS);
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let issuer = Issuer::new(ca_params(), &ca_key);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| format!("cannot sign the certificate: {e}"))?;
    verify_against_ca(cert.der(), &ca_pem, &sans[0]).map_err(|e| {
        format!(
            "the certificate made does not verify against {} ({e}): was that CA made by \
             `chitty cert ca` with the key in {}?",
            ca_cert_path.display(),
            ca_key_path.display()
        )
    })?;
    write_file(&key_path, &key.serialize_pem(), true, force)?;
    write_file(&cert_path, &cert.pem(), false, force)?;
    Ok((cert_path, key_path))
}

/// Whether `cert` verifies, for `name`, against the CA certificate(s) in
/// `ca_pem`, as a client would check it.
fn verify_against_ca(cert: &CertificateDer<'_>, ca_pem: &[u8], name: &str) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        roots
            .add(ca.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(cert, &[], &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "chitty-cert-{label}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_node_certificate_is_signed_by_the_ca_and_files_are_not_overwritten() {
        let dir = temp_dir("ca");
        let (ca, ca_key) = make_ca(&dir, false).expect("a CA");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&ca_key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "the CA key is private");
        }
        let again = make_ca(&dir, false).expect_err("no overwrite");
        assert!(again.contains("--force"), "{again}");
        make_ca(&dir, true).expect("overwrite with --force");

        let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (cert, _key) = make_node(&dir, "node1", &sans, &dir, false).expect("a node");
        let der = CertificateDer::from_pem_slice(&std::fs::read(&cert).unwrap()).unwrap();
        let ca_pem = std::fs::read(&ca).unwrap();
        verify_against_ca(&der, &ca_pem, "localhost").expect("valid for localhost");
        assert!(verify_against_ca(&der, &ca_pem, "example.com").is_err());

        // Against another CA, it does not verify.
        let other = temp_dir("other");
        let (other_ca, _) = make_ca(&other, false).unwrap();
        let other_pem = std::fs::read(&other_ca).unwrap();
        assert!(verify_against_ca(&der, &other_pem, "127.0.0.1").is_err());

        assert!(make_node(&dir, "../x", &sans, &dir, false).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&other).unwrap();
    }
}

//! TLS for participants' connections and the mesh (rustls with ring).
//!
//! [`TlsSettings`] is loaded once from PEM files and handed to everything
//! that dials or serves:
//! * A client has the cluster's CA (`--tls-ca`): it dials `https://` and
//!   accepts a node only if the node's certificate is signed by that CA and
//!   valid for the address it dials, on the first node and on every node it
//!   moves to.
//! * A node has the CA, its certificate and its key (`--tls-cert`,
//!   `--tls-key`, `--tls-ca`; all three or none). It serves only TLS, and
//!   dials its peers with TLS, presenting its own certificate. The mesh is
//!   mutual TLS: a connection may present a client certificate, which must
//!   then be signed by the CA or the handshake fails; participants present
//!   none. A mesh call is served only on a connection that presented one
//!   (see `mesh::CheckMeshCaller`), so a node whose certificate is not from
//!   the cluster's CA cannot join, relay or change membership.
//!
//! A connection to a TLS node that does not begin with a TLS handshake is
//! served only to refuse each of its calls with a status saying what to pass
//! ([`plaintext_refusal`]): without it, a client that forgot `--tls-ca`
//! would see an HTTP/2 protocol error.
//!
//! The connection handshake (TLS, then the HTTP/2 preface) is timed as one
//! by `connections::Incoming`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, AlertDescription, CertificateError, RootCertStore, ServerConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The ALPN protocol of gRPC: HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// TLS settings of a client or a node, loaded once from files.
#[derive(Clone)]
pub struct TlsSettings {
    inner: Arc<Loaded>,
}

struct Loaded {
    /// The CA file, named in error messages.
    ca_path: PathBuf,
    ca_pem: Vec<u8>,
    roots: Arc<RootCertStore>,
    /// A node's own certificate chain and key.
    identity: Option<NodeIdentity>,
}

struct NodeIdentity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("ca", &self.inner.ca_path)
            .field("identity", &self.inner.identity.is_some())
            .finish()
    }
}

fn read(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
}

/// The PEM file given with `flag` and the certificates in it, at least one.
fn read_certificates(
    path: &Path,
    flag: &str,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), String> {
    let pem = read(path, flag)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{flag} {}: not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{flag} {}: no certificate in the file",
            path.display()
        ));
    }
    Ok((pem, certs))
}

/// A client's TLS settings from its `--tls-ca` flag: none without one.
pub fn client_tls(ca: Option<&Path>) -> Result<Option<TlsSettings>, String> {
    ca.map(TlsSettings::client).transpose()
}

/// The crypto this crate uses everywhere.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

impl TlsSettings {
    /// A client's settings: the CA that signs the nodes' certificates.
    pub fn client(ca: &Path) -> Result<Self, String> {
        let (ca_pem, certs) = read_certificates(ca, "--tls-ca")?;
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert).map_err(|e| {
                format!(
                    "--tls-ca {}: not a usable CA certificate: {e}",
                    ca.display()
                )
            })?;
        }
        Ok(Self {
            inner: Arc::new(Loaded {
                ca_path: ca.to_path_buf(),
                ca_pem,
                roots: Arc::new(roots),
                identity: None,
            }),
        })
    }

    /// A node's settings: its certificate chain and key, and the cluster's
    /// CA, which signs every node's certificate.
    pub fn node(cert: &Path, key: &Path, ca: &Path) -> Result<Self, String> {
        let mut settings = Self::client(ca)?;
        let (cert_pem, chain) = read_certificates(cert, "--tls-cert")?;
        let key_pem = read(key, "--tls-key")?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("--tls-key {}: not a PEM private key: {e}", key.display()))?;
        let identity = NodeIdentity {
            cert_pem,
            key_pem,
            chain,
            key: key_der,
        };
        let inner = Arc::get_mut(&mut settings.inner).expect("not shared yet");
        inner.identity = Some(identity);
        // Check the pair now, so a node does not start with a key that is
        // not its certificate's.
        settings.server_config().map_err(|e| {
            format!(
                "--tls-cert {} and --tls-key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
        Ok(settings)
    }

    /// The CA file these settings were loaded from.
    pub fn ca_path(&self) -> &Path {
        &self.inner.ca_path
    }

    /// Whether these are a node's settings (with its own certificate).
    pub fn has_identity(&self) -> bool {
        self.inner.identity.is_some()
    }

    /// What a TLS node serves with: its certificate, and client
    /// certificates verified against the CA when presented (participants
    /// present none).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        let identity = self
            .inner
            .identity
            .as_ref()
            .ok_or("a node needs --tls-cert and --tls-key to serve TLS")?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.inner.roots.clone(), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("the CA cannot verify client certificates: {e}"))?;
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(identity.chain.clone(), identity.key.clone_key())
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    /// What dialling with these settings applies: the CA, and a node's own
    /// certificate as its client certificate.
    fn client_config(&self) -> ClientTlsConfig {
        let config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.inner.ca_pem));
        match &self.inner.identity {
            Some(id) => config.identity(Identity::from_pem(&id.cert_pem, &id.key_pem)),
            None => config,
        }
    }
}

/// An endpoint for the node at `addr` (`host:port` or a URL): `https://`
/// with `tls`, else `http://`.
pub fn endpoint(addr: &str, tls: Option<&TlsSettings>) -> Result<Endpoint, String> {
    let url = match (addr.split_once("://"), tls) {
        (Some(_), _) => addr.to_string(),
        (None, Some(_)) => format!("https://{addr}"),
        (None, None) => format!("http://{addr}"),
    };
    let endpoint = Endpoint::from_shared(url).map_err(|e| e.to_string())?;
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.client_config())
            .map_err(|e| format!("TLS settings: {}", chain(&e))),
        None => Ok(endpoint),
    }
}

/// `err` and its sources, joined with ": ".
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// The rustls error somewhere in `err`'s chain (tokio-rustls carries it
/// inside an `io::Error`, whose `source` skips it).
pub fn rustls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls);
        }
        source = e.source();
    }
    None
}

/// Why dialling `addr` failed, in words a user can act on. `tls` is what
/// the dialler used.
pub fn explain_dial_error(
    addr: &str,
    tls: Option<&TlsSettings>,
    err: &(dyn std::error::Error + 'static),
) -> String {
    let detail = chain(err);
    let Some(tls) = tls else { return detail };
    let ca = tls.ca_path().display();
    let what = match rustls_error(err) {
        Some(rustls::Error::InvalidCertificate(cert)) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                format!("the certificate of {addr} is not signed by the CA in {ca}")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the certificate of {addr} is not valid for that address: give the node a \
                     certificate with it (chitty cert node --san HOST), or dial a name it has"
                )
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                format!("the certificate of {addr} has expired")
            }
            other => format!("the certificate of {addr} is refused: {other:?}"),
        },
        Some(rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::DecryptError,
        )) if tls.has_identity() => format!(
            "{addr} refused this node's certificate: it is not signed by the cluster's CA \
             (every node needs a certificate from the CA in its --tls-ca)"
        ),
        Some(rustls::Error::InvalidMessage(_)) => format!(
            "{addr} does not speak TLS: start it with --tls-cert, --tls-key and --tls-ca, or \
             connect without --tls-ca"
        ),
        Some(other) => format!("TLS handshake with {addr} failed: {other}"),
        None if closed_by_peer(err) || detail.contains("HTTP/2 was not") => {
            format!(
                "{addr} closed the connection during the TLS handshake: it does not speak TLS \
                 (start it with --tls-cert, --tls-key and --tls-ca, or connect without --tls-ca)"
            )
        }
        None => return detail,
    };
    format!("{what} ({detail})")
}

/// Whether dialling with `tls` failed in the TLS handshake (a setup error
/// that trying again does not fix), not in reaching the address.
pub fn is_handshake_failure(
    tls: Option<&TlsSettings>,
    err: &(dyn std::error::Error + 'static),
) -> bool {
    tls.is_some()
        && (rustls_error(err).is_some()
            || closed_by_peer(err)
            || chain(err).contains("HTTP/2 was not"))
}

/// Why a call to `addr` over a connection made with a node's `tls`
/// settings failed, when TLS is the likely cause; `None` otherwise.
///
/// With TLS 1.3 the server checks a client certificate after the client
/// has finished its handshake, so a node whose certificate the server
/// refuses learns of it on its first call, as a connection closed under
/// it (the server's log says why).
pub fn explain_call_error(
    addr: &str,
    tls: Option<&TlsSettings>,
    status: &tonic::Status,
) -> Option<String> {
    let tls = tls?;
    if rustls_error(status).is_some() {
        return Some(explain_dial_error(addr, Some(tls), status));
    }
    // The closed connection shows as a reset or end of stream, or, when
    // it closed before the request was sent, as a cancelled call.
    let closed = closed_by_peer(status) || status.code() == tonic::Code::Cancelled;
    (closed && tls.has_identity()).then(|| {
        format!(
            "{addr} closed the connection after the TLS handshake: it most likely refused this \
             node's certificate as not signed by the cluster's CA (its log says why)"
        )
    })
}

/// Whether `err` is the peer closing or resetting the connection.
fn closed_by_peer(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Why a node refused an incoming TLS handshake, for its log; `None` for a
/// failure not worth a WARN line (the peer went away).
pub fn explain_accept_error(err: &std::io::Error) -> Option<String> {
    let what = match rustls_error(err) {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => "its certificate is not signed by this cluster's CA (--tls-ca)".to_string(),
        Some(rustls::Error::InvalidCertificate(other)) => {
            format!("its certificate is refused: {other:?}")
        }
        Some(rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown,
        )) => "it does not trust this node's certificate (its --tls-ca is another CA)".to_string(),
        Some(other) => format!("TLS handshake failed: {other}"),
        None => return None,
    };
    Some(what)
}

/// The path prefix of mesh calls.
const MESH_PATH: &str = "/chittychat.v1.ServerMesh/";

/// The status every call on a connection without TLS to a TLS node gets:
/// what a participant, or a node, must pass.
pub fn plaintext_refusal(path: &str) -> tonic::Status {
    let message = if path.starts_with(MESH_PATH) {
        "this node speaks TLS and the caller does not: start every node of the cluster with \
         --tls-cert, --tls-key and --tls-ca"
    } else {
        "this node speaks TLS: connect with --tls-ca FILE (the CA that signed the nodes' \
         certificates)"
    };
    tonic::Status::unauthenticated(message)
}

/// Wraps every service of a TLS node so that a call on a connection without
/// TLS is answered with [`plaintext_refusal`] and reaches no service. Off
/// (`false`) on a node without TLS.
#[derive(Debug, Clone, Copy)]
pub struct RequireTlsLayer(pub bool);

impl<S> tower::Layer<S> for RequireTlsLayer {
    type Service = RequireTls<S>;
    fn layer(&self, inner: S) -> RequireTls<S> {
        RequireTls { inner, on: self.0 }
    }
}

/// See [`RequireTlsLayer`].
#[derive(Debug, Clone)]
pub struct RequireTls<S> {
    inner: S,
    on: bool,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RequireTls<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
        let plaintext = self.on
            && !req
                .extensions()
                .get::<crate::connections::ConnInfo>()
                .is_some_and(|c| c.tls);
        if plaintext {
            let status = plaintext_refusal(req.uri().path());
            return Box::pin(async move { Ok(status.into_http()) });
        }
        Box::pin(self.inner.call(req))
    }
}

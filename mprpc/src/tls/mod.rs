//! TLS for mprpc connections: rustls on ring, TLS 1.3 only, with mutual authentication.
//!
//! - [`Identity`]: a certificate chain and its private key, read from PEM;
//! - [`ServerTls`]: what a server presents and, for mutual TLS, the CA its clients'
//!   certificates must chain to; given to [`ServerBuilder::tls`](crate::ServerBuilder::tls);
//! - [`ClientTls`]: the CA a server's certificate must chain to, the name it must carry, and
//!   the client's own certificate; given to [`ClientBuilder::tls`](crate::ClientBuilder::tls);
//! - [`PeerIdentity`]: the names of the verified client certificate, which server
//!   interceptors read with [`Context::peer_identity`](crate::Context::peer_identity).
//!
//! Both configurations are reloadable in place ([`ServerTls::reload`],
//! [`ClientTls::reload`]): connections made afterwards use the new certificates, open
//! connections and their calls are untouched. That is certificate rotation without a
//! restart and without a failed call.
//!
//! Both ends offer the ALPN protocol `mprpc`, so a TLS client of another protocol that holds
//! a certificate of the same CA is refused at the handshake. Only TLS 1.3 is spoken: both
//! ends are mprpc, and in TLS 1.3 a refused client certificate is never followed by a
//! request the server reads. Sessions are not resumed: every connection verifies the
//! peer's whole chain afresh (pooled connections are long-lived, so this costs little).
//!
//! Certificates that carry an extended key usage extension must list `serverAuth` to be
//! served and `clientAuth` to be presented by a client (one certificate may list both);
//! certificates without the extension may be used for either.

mod io;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::danger::ClientCertVerifier;
use tokio_rustls::rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

pub(crate) use io::{
    ServerStream, Side, accept, connect, count_failure, failure_reason, refusal_reason,
};

/// The ALPN protocol name both ends offer.
const ALPN: &[u8] = b"mprpc";

/// Why a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What reading it returned.
        #[source]
        source: std::io::Error,
    },
    /// A file's contents are not usable; the source says why.
    #[error("in {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: Box<TlsError>,
    },
    /// The PEM text does not parse.
    #[error("PEM does not parse")]
    Pem(#[source] pem::Error),
    /// The certificate chain PEM holds no `CERTIFICATE` block.
    #[error("no certificate in the PEM")]
    NoCertificate,
    /// The key PEM holds no private key block.
    #[error("no private key in the PEM")]
    NoKey,
    /// The CA PEM holds no `CERTIFICATE` block.
    #[error("no CA certificate in the PEM")]
    NoCa,
    /// A CA certificate cannot serve as a trust anchor.
    #[error("a CA certificate is not usable as a trust anchor")]
    BadCa(#[source] rustls::Error),
    /// The client CA does not make a certificate verifier.
    #[error("the client CA does not make a certificate verifier")]
    Verifier(#[source] VerifierBuilderError),
    /// The certificate chain and key do not make a TLS configuration (the key does not
    /// match the certificate, or is of an unsupported type).
    #[error("the certificate chain and key do not make a TLS configuration")]
    Rejected(#[source] rustls::Error),
}

impl TlsError {
    fn in_file(self, path: &Path) -> TlsError {
        TlsError::File {
            path: path.to_owned(),
            source: Box::new(self),
        }
    }
}

/// A certificate chain (the end-entity certificate first) and its private key.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Identity {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Reads a PEM certificate chain (end-entity certificate first, then intermediates)
    /// and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    /// [`TlsError::Pem`] when either does not parse, [`TlsError::NoCertificate`] or
    /// [`TlsError::NoKey`] when one holds none.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<Identity, TlsError> {
        Ok(Identity {
            chain: chain(cert_chain_pem)?,
            key: private_key(key_pem)?,
        })
    }

    /// [`Identity::from_pem`] on the contents of two files (they may be the same file).
    ///
    /// # Errors
    /// [`TlsError::Io`] when a file cannot be read, [`TlsError::File`] naming the file
    /// whose contents are wrong.
    pub fn from_pem_files(
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Identity, TlsError> {
        let (cert, key_path) = (cert.as_ref(), key.as_ref());
        Ok(Identity {
            chain: chain(&read(cert)?).map_err(|err| err.in_file(cert))?,
            key: private_key(&read(key_path)?).map_err(|err| err.in_file(key_path))?,
        })
    }
}

fn chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = certificates(pem)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(chain)
}

fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|err| match err {
        pem::Error::NoItemsFound => TlsError::NoKey,
        err => TlsError::Pem(err),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::Pem)
}

fn roots(ca_pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let cas = certificates(ca_pem)?;
    if cas.is_empty() {
        return Err(TlsError::NoCa);
    }
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(TlsError::BadCa)?;
    }
    Ok(Arc::new(roots))
}

/// ring, named rather than taken from the process default, so that another crate's choice
/// of provider changes nothing here.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The names in a verified peer certificate's subjectAltName extension: what a server
/// interceptor decides a caller's role from ([`Context::peer_identity`](crate::Context::peer_identity)).
///
/// Only names the TLS layer verified end up here: the certificate chained to the
/// configured CA and its holder proved it has the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    dns_names: Vec<String>,
    uris: Vec<String>,
}

impl PeerIdentity {
    /// An identity with these names, for tests and for code that makes contexts itself.
    pub fn new(dns_names: Vec<String>, uris: Vec<String>) -> PeerIdentity {
        PeerIdentity { dns_names, uris }
    }

    /// The certificate's `dNSName` entries, as written in it.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// The certificate's `uniformResourceIdentifier` entries, e.g. `spiffe://mpim/gateway`.
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// Whether the certificate names `name` as a `dNSName` (compared as DNS compares:
    /// ASCII case-insensitive).
    pub fn has_dns_name(&self, name: &str) -> bool {
        self.dns_names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Whether the certificate carries exactly the URI `uri`.
    pub fn has_uri(&self, uri: &str) -> bool {
        self.uris.iter().any(|u| u == uri)
    }

    /// The names of a certificate the TLS layer already verified.
    pub(crate) fn from_der(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
        let cert = webpki::EndEntityCert::try_from(cert).ok()?;
        Some(PeerIdentity {
            dns_names: cert.valid_dns_names().map(str::to_owned).collect(),
            uris: cert.valid_uri_names().map(str::to_owned).collect(),
        })
    }
}

/// A server's TLS configuration: its identity and, for mutual TLS, the CA every client
/// certificate must chain to. Clones share one configuration, which [`ServerTls::reload`]
/// replaces for all of them.
#[derive(Clone)]
pub struct ServerTls {
    state: Arc<parking_lot::Mutex<ServerState>>,
}

/// A parking_lot mutex: held to clone or swap `Arc`s, once per accepted connection and per
/// reload, never across an await.
struct ServerState {
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mutual = self.state.lock().verifier.is_some();
        f.debug_struct("ServerTls")
            .field("mutual", &mutual)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Mutual TLS: every client must present a certificate chaining to `client_ca_pem`
    /// (one or more PEM certificates); a client without one is refused at the handshake.
    ///
    /// # Errors
    /// [`TlsError`] when the CA or the identity is unusable.
    pub fn mutual(identity: Identity, client_ca_pem: &[u8]) -> Result<ServerTls, TlsError> {
        let verifier = client_verifier(client_ca_pem)?;
        ServerTls::with(identity, Some(verifier))
    }

    /// Server authentication only: clients present no certificate, and
    /// [`Context::peer_identity`](crate::Context::peer_identity) is `None`.
    ///
    /// # Errors
    /// [`TlsError::Rejected`] when the identity is unusable.
    pub fn new(identity: Identity) -> Result<ServerTls, TlsError> {
        ServerTls::with(identity, None)
    }

    fn with(
        identity: Identity,
        verifier: Option<Arc<dyn ClientCertVerifier>>,
    ) -> Result<ServerTls, TlsError> {
        let config = server_config(identity, verifier.clone())?;
        Ok(ServerTls {
            state: Arc::new(parking_lot::Mutex::new(ServerState { verifier, config })),
        })
    }

    /// Certificate rotation: connections accepted from now on present `identity` and, when
    /// `client_ca_pem` is given, verify clients against it (which also turns a
    /// server-authentication-only configuration into mutual TLS). Open connections and
    /// their calls are untouched. On error nothing changes.
    ///
    /// # Errors
    /// [`TlsError`] when the new CA or identity is unusable.
    pub fn reload(&self, identity: Identity, client_ca_pem: Option<&[u8]>) -> Result<(), TlsError> {
        let verifier = match client_ca_pem {
            Some(pem) => Some(client_verifier(pem)?),
            None => self.state.lock().verifier.clone(),
        };
        let config = server_config(identity, verifier.clone())?;
        *self.state.lock() = ServerState { verifier, config };
        Ok(())
    }

    /// The configuration a connection accepted now uses.
    pub(crate) fn current(&self) -> Arc<ServerConfig> {
        self.state.lock().config.clone()
    }
}

fn client_verifier(ca_pem: &[u8]) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(TlsError::Verifier)
}

fn server_config(
    identity: Identity,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Rejected)?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(identity.chain, identity.key)
        .map_err(TlsError::Rejected)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: every connection verifies the client's whole chain, so an expired or
    // no longer trusted certificate is refused on the next connection, not once a cached
    // session runs out. Pooled connections live long; a full handshake each costs little.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client's TLS configuration: the CA a server's certificate must chain to, optionally
/// the certificate this client presents (mutual TLS), and optionally the name the server's
/// certificate must carry.
///
/// **Which name the server must carry.** By default a client built with
/// [`ClientBuilder::discover`](crate::ClientBuilder::discover) requires a `dNSName` equal to
/// the service name it looked up (e.g. `example.Echo`; compared ASCII case-insensitively),
/// so an instance registered under a service without holding that service's certificate
/// gets no calls: its handshake fails, the endpoint is ejected, and the call goes to
/// another instance. A client built with
/// [`ClientBuilder::connect_lazy`](crate::ClientBuilder::connect_lazy) requires the host
/// of the address (a DNS name, or an IP address as an `iPAddress` entry).
/// [`ClientTls::server_name`] replaces either.
///
/// Clones share one configuration, which [`ClientTls::reload`] replaces for all of them;
/// [`ClientTls::identity`] and [`ClientTls::server_name`] return a configuration of
/// their own.
#[derive(Clone)]
pub struct ClientTls {
    state: Arc<parking_lot::Mutex<ClientState>>,
    server_name: Option<Arc<str>>,
}

/// A parking_lot mutex: held to clone or swap `Arc`s, once per dial and per reload, never
/// across an await.
struct ClientState {
    roots: Arc<RootCertStore>,
    identity: Option<Identity>,
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mutual = self.state.lock().identity.is_some();
        f.debug_struct("ClientTls")
            .field("mutual", &mutual)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Trusts servers whose certificate chains to `server_ca_pem` (one or more PEM
    /// certificates). The client presents no certificate until [`ClientTls::identity`].
    ///
    /// # Errors
    /// [`TlsError`] when the CA is unusable.
    pub fn new(server_ca_pem: &[u8]) -> Result<ClientTls, TlsError> {
        let roots = roots(server_ca_pem)?;
        ClientTls::with(roots, None, None)
    }

    fn with(
        roots: Arc<RootCertStore>,
        identity: Option<Identity>,
        server_name: Option<Arc<str>>,
    ) -> Result<ClientTls, TlsError> {
        let config = client_config(roots.clone(), identity.clone())?;
        let state = ClientState {
            roots,
            identity,
            config,
        };
        Ok(ClientTls {
            state: Arc::new(parking_lot::Mutex::new(state)),
            server_name,
        })
    }

    /// The client certificate presented for mutual TLS.
    ///
    /// # Errors
    /// [`TlsError::Rejected`] when the identity is unusable.
    pub fn identity(self, identity: Identity) -> Result<ClientTls, TlsError> {
        let roots = self.state.lock().roots.clone();
        ClientTls::with(roots, Some(identity), self.server_name)
    }

    /// The name the server's certificate must carry, instead of the default (the service
    /// looked up, or the host of the address; see [`ClientTls`]).
    pub fn server_name(mut self, name: impl Into<String>) -> ClientTls {
        self.server_name = Some(name.into().into());
        self
    }

    /// Rotation for the client side: connections dialled from now on present `identity`
    /// (when given) and trust `server_ca_pem` (when given); what is not given stays. Open
    /// connections are untouched. On error nothing changes.
    ///
    /// # Errors
    /// [`TlsError`] when the new CA or identity is unusable.
    pub fn reload(
        &self,
        identity: Option<Identity>,
        server_ca_pem: Option<&[u8]>,
    ) -> Result<(), TlsError> {
        let new_roots = server_ca_pem.map(roots).transpose()?;
        let (roots, identity) = {
            let state = self.state.lock();
            let identity = identity.or_else(|| state.identity.clone());
            (new_roots.unwrap_or_else(|| state.roots.clone()), identity)
        };
        let config = client_config(roots.clone(), identity.clone())?;
        *self.state.lock() = ClientState {
            roots,
            identity,
            config,
        };
        Ok(())
    }

    /// The name set with [`ClientTls::server_name`], if any.
    pub(crate) fn name_override(&self) -> Option<&str> {
        self.server_name.as_deref()
    }

    /// The configuration a connection dialled now uses.
    pub(crate) fn current(&self) -> Arc<ClientConfig> {
        self.state.lock().config.clone()
    }
}

fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(TlsError::Rejected)?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain, identity.key)
            .map_err(TlsError::Rejected)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    // As on the server: a full handshake, and the server's chain verified, every time.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Ca = rcgen::CertifiedIssuer<'static, rcgen::KeyPair>;

    fn ca() -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        rcgen::CertifiedIssuer::self_signed(params, key).expect("self-signed")
    }

    fn leaf(issuer: &Ca, names: &[&str], uri: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().expect("ia5")));
        let cert = params.signed_by(&key, issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_verified_certificate_yields_its_dns_and_uri_names() {
        let issuer = ca();
        let (cert, key) = leaf(
            &issuer,
            &["example.Echo", "gw.mpim"],
            "spiffe://mpim/gateway",
        );
        let identity = Identity::from_pem(cert.as_bytes(), key.as_bytes()).expect("identity");
        let peer = PeerIdentity::from_der(&identity.chain[0]).expect("parses");
        assert_eq!(peer.dns_names(), ["example.Echo", "gw.mpim"]);
        assert_eq!(peer.uris(), ["spiffe://mpim/gateway"]);
        assert!(peer.has_dns_name("EXAMPLE.echo"));
        assert!(!peer.has_dns_name("example"));
        assert!(peer.has_uri("spiffe://mpim/gateway"));
        assert!(!peer.has_uri("spiffe://mpim/GATEWAY"));
    }

    #[test]
    fn bad_pem_is_a_clear_error_never_a_panic() {
        let issuer = ca();
        let (cert, key) = leaf(&issuer, &["a"], "u:a");
        let err = |r: Result<Identity, TlsError>| r.expect_err("refused");
        assert!(matches!(
            err(Identity::from_pem(b"", key.as_bytes())),
            TlsError::NoCertificate
        ));
        assert!(matches!(
            err(Identity::from_pem(cert.as_bytes(), b"no key here")),
            TlsError::NoKey
        ));
        let truncated = &cert.as_bytes()[..cert.len() - 30];
        assert!(matches!(
            err(Identity::from_pem(truncated, key.as_bytes())),
            TlsError::Pem(_)
        ));
        assert!(matches!(ClientTls::new(b"nothing"), Err(TlsError::NoCa)));
        assert!(ClientTls::new(issuer.pem().as_bytes()).is_ok());
        // A key that is not the certificate's.
        let (_, other_key) = leaf(&issuer, &["b"], "u:b");
        let mismatched = Identity::from_pem(cert.as_bytes(), other_key.as_bytes()).expect("pem");
        assert!(matches!(
            ServerTls::new(mismatched),
            Err(TlsError::Rejected(_))
        ));
    }

    #[test]
    fn files_are_named_in_errors() {
        let dir = std::env::temp_dir().join(format!("mprpc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let issuer = ca();
        let (cert, key) = leaf(&issuer, &["a"], "u:a");
        let (cert_path, key_path) = (dir.join("a.crt"), dir.join("a.key"));
        std::fs::write(&cert_path, cert).expect("write");
        std::fs::write(&key_path, key).expect("write");
        assert!(Identity::from_pem_files(&cert_path, &key_path).is_ok());
        match Identity::from_pem_files(&key_path, &key_path) {
            Err(TlsError::File { path, source }) => {
                assert_eq!(path, key_path);
                assert!(matches!(*source, TlsError::NoCertificate));
            }
            other => panic!("expected File, got {other:?}"),
        }
        match Identity::from_pem_files(dir.join("missing"), &key_path) {
            Err(TlsError::Io { path, .. }) => assert_eq!(path, dir.join("missing")),
            other => panic!("expected Io, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

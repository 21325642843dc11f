//! TLS towards a gateway, client side only.
//!
//! The gateways speak plain TCP and WebSocket; TLS is terminated in front of them (by nginx
//! in the cluster layout), and the bytes inside are unchanged. So all a client needs is
//! a [`Connector`]: rustls on the ring provider (no OpenSSL, no C build beyond ring's own),
//! the Mozilla roots that `webpki-roots` compiles in, and optionally one more CA read from
//! a PEM file, for a deployment with its own (self-signed) CA.
//!
//! The compiled-in roots rather than the system's store: the same trust on every machine,
//! in a minimal container with no CA bundle installed too, and no files read at start; a
//! private CA is named explicitly instead (`Options::ca_file`, `--ca`).
//!
//! The certificate must name the host the client was given: a DNS name (sent as SNI) or an
//! IP address (matched against the certificate's IP addresses).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

/// Why TLS could not be set up (before any connection is made).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The extra CA file could not be read, or holds no usable certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The host cannot be checked against a certificate.
    #[error("{host:?} is not a DNS name or IP address that TLS can verify")]
    ServerName {
        /// The host as given.
        host: String,
    },
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

/// Opens TLS connections to one server: the trusted roots and the name its certificate
/// must carry. Cheap to clone (the configuration is shared).
#[derive(Clone)]
pub struct Connector {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Connector {
    /// TLS towards `host` (a DNS name, or an IP address, without brackets), trusting the
    /// compiled-in public roots and, when given, the CA certificates in the PEM file
    /// `ca_file`.
    ///
    /// # Errors
    /// [`TlsError::ServerName`] for a host no certificate can name, [`TlsError::CaFile`]
    /// when the file cannot be read or holds no valid certificate.
    pub fn new(host: &str, ca_file: Option<&Path>) -> Result<Connector, TlsError> {
        let name = ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName {
            host: host.to_owned(),
        })?;
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_file {
            add_ca_file(&mut roots, path)?;
        }
        // The provider is named rather than taken from the process default, so that another
        // crate enabling a second provider cannot make this ambiguous.
        let provider = Arc::new(crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Setup(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Connector {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// The name the server's certificate must carry.
    pub fn server_name(&self) -> String {
        self.name.to_str().into_owned()
    }

    /// Runs the TLS handshake on `tcp`.
    ///
    /// # Errors
    /// When the handshake fails: the certificate is not trusted or names another host
    /// (the error says which), or the peer speaks no TLS.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<Stream> {
        let stream = self.connector.connect(self.name.clone(), tcp).await?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Adds every certificate of the PEM file at `path` to `roots`.
fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TlsError> {
    let failed = |reason: String| TlsError::CaFile {
        path: path.to_owned(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|err| failed(err.to_string()))?;
    if certificates.is_empty() {
        return Err(failed("no certificate in it".into()));
    }
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|err| failed(err.to_string()))?;
    }
    Ok(())
}

/// A connection to a gateway, with or without TLS: what the TCP framing and the WebSocket
/// layer run on.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_and_ca_files_are_checked_up_front() {
        assert_eq!(
            Connector::new("im.example", None).unwrap().server_name(),
            "im.example"
        );
        assert_eq!(Connector::new("::1", None).unwrap().server_name(), "::1");
        assert!(matches!(
            Connector::new("bad host", None),
            Err(TlsError::ServerName { .. })
        ));
        let missing = Path::new("/nonexistent/ca.pem");
        let err = Connector::new("h", Some(missing)).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let empty =
            std::env::temp_dir().join(format!("im-client-empty-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = Connector::new("h", Some(&empty)).unwrap_err();
        let _ = std::fs::remove_file(&empty);
        assert!(err.to_string().contains("no certificate"), "{err}");
    }
}

//! The TLS side of a connection: the handshake on either end, the peer identity it yields,
//! and what its failures mean, in words for callers and in a label for the metrics.

use std::io;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, AlertDescription, InvalidMessage, ServerConfig};

use super::{ClientTls, PeerIdentity};

/// A server's end of a TLS connection.
pub(crate) type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;
/// A client's end of a TLS connection.
pub(crate) type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Runs the server's handshake; the identity is that of the client's verified certificate,
/// `None` when the configuration asks for none.
pub(crate) async fn accept(
    config: Arc<ServerConfig>,
    stream: TcpStream,
) -> io::Result<(ServerStream, Option<Arc<PeerIdentity>>)> {
    let stream = tokio_rustls::TlsAcceptor::from(config)
        .accept(stream)
        .await?;
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(PeerIdentity::from_der)
        .map(Arc::new);
    Ok((stream, identity))
}

/// Runs the client's handshake, requiring the server's certificate to carry `name`.
///
/// # Errors
/// Why, in words for [`Error::Tls`](crate::Error::Tls); the failure is counted.
pub(crate) async fn connect(
    tls: &ClientTls,
    name: &str,
    stream: TcpStream,
) -> Result<ClientStream, String> {
    let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
        format!("`{name}` is not a valid server name (a DNS name or an IP address)")
    })?;
    tokio_rustls::TlsConnector::from(tls.current())
        .connect(server_name, stream)
        .await
        .map_err(|err| {
            count_failure(Side::Client, failure_reason(&err));
            describe_handshake(&err)
        })
}

fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A failed client handshake in words; the likeliest cause first when the server does not
/// speak TLS at all.
fn describe_handshake(err: &io::Error) -> String {
    let not_tls = err.kind() == io::ErrorKind::UnexpectedEof
        || matches!(
            rustls_error(err),
            Some(rustls::Error::InvalidMessage(
                InvalidMessage::InvalidContentType | InvalidMessage::InvalidEmptyPayload
            ))
        );
    if not_tls {
        format!("the server did not answer the TLS handshake (does it serve plaintext?): {err}")
    } else {
        err.to_string()
    }
}

/// Why a TLS connection failed before its first frame arrived, when the cause is a TLS
/// refusal (in TLS 1.3 the server checks the client's certificate after the client
/// considers the handshake done, so its refusal arrives as the first thing read).
pub(crate) fn refusal_reason(err: &io::Error) -> Option<String> {
    rustls_error(err).map(|err| format!("the server refused the connection: {err}"))
}

/// The `reason` label of a handshake failure in the metrics.
pub(crate) fn failure_reason(err: &io::Error) -> &'static str {
    let Some(tls) = rustls_error(err) else {
        return match err.kind() {
            io::ErrorKind::TimedOut => "timeout",
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => "closed",
            _ => "io",
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            "certificate"
        }
        rustls::Error::AlertReceived(alert) if is_certificate_alert(*alert) => "certificate",
        rustls::Error::InvalidMessage(
            InvalidMessage::InvalidContentType | InvalidMessage::InvalidEmptyPayload,
        ) => "not_tls",
        _ => "protocol",
    }
}

fn is_certificate_alert(alert: AlertDescription) -> bool {
    matches!(
        alert,
        AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
    )
}

/// Counts a failed handshake in `mprpc_{side}_tls_handshake_failures_total`.
pub(crate) fn count_failure(side: Side, reason: &'static str) {
    match side {
        Side::Server => {
            metrics::counter!("mprpc_server_tls_handshake_failures_total", "reason" => reason)
                .increment(1)
        }
        Side::Client => {
            metrics::counter!("mprpc_client_tls_handshake_failures_total", "reason" => reason)
                .increment(1)
        }
    }
}

/// Which end of a connection failed its handshake.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    Server,
    Client,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(err: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }

    #[test]
    fn failures_are_labelled_by_cause() {
        let cert = wrapped(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ));
        assert_eq!(failure_reason(&cert), "certificate");
        let missing = wrapped(rustls::Error::NoCertificatesPresented);
        assert_eq!(failure_reason(&missing), "certificate");
        let refused = wrapped(rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired,
        ));
        assert_eq!(failure_reason(&refused), "certificate");
        let plaintext = wrapped(rustls::Error::InvalidMessage(
            InvalidMessage::InvalidContentType,
        ));
        assert_eq!(failure_reason(&plaintext), "not_tls");
        assert!(describe_handshake(&plaintext).contains("plaintext"));
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(failure_reason(&eof), "closed");
        assert!(describe_handshake(&eof).contains("plaintext"));
        assert_eq!(
            failure_reason(&io::Error::from(io::ErrorKind::TimedOut)),
            "timeout"
        );
        assert!(refusal_reason(&refused).is_some());
        assert!(refusal_reason(&eof).is_none());
    }
}

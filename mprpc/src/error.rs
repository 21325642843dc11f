//! Errors a client call can end with.

use crate::frame::FrameError;
use crate::status::{Code, Status};

/// Why a call failed.
///
/// Every variant maps to a wire [`Code`] ([`Error::code`]) and says whether sending the call
/// again cannot apply it twice ([`Error::is_retry_safe`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with a non-OK status.
    #[error("{0}")]
    Status(#[from] Status),
    /// The deadline passed before a response arrived; the server was told to stop.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// No connection could be made; the call was not sent.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// What the dial returned.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake with the server failed, or the server refused this client's
    /// certificate: the server's certificate does not chain to the trusted CA or does not
    /// carry the required name, the server does not speak TLS (or this client does not and
    /// the server does), or the server does not accept this client's certificate. The call
    /// was not read by the server; it may go to another instance, and the instance is
    /// ejected at once (a certificate does not fix itself by retrying).
    #[error("TLS with {addr} failed: {reason}")]
    Tls {
        /// The address dialled.
        addr: String,
        /// What went wrong, from the TLS layer.
        reason: String,
    },
    /// The call was not sent: the endpoint is in reconnect backoff, the connection closed
    /// before the request was written, or the server went away before starting it.
    #[error("unavailable: {0}")]
    Unavailable(&'static str),
    /// The connection closed after the request was sent and before its response arrived:
    /// the server may or may not have run it.
    #[error("connection lost before the response arrived")]
    ConnectionLost,
    /// The request does not fit in a frame.
    #[error("request too large")]
    TooLarge(#[source] FrameError),
    /// The response body does not decode as the expected message.
    #[error("response body does not decode")]
    Decode(#[source] prost::DecodeError),
}

impl Error {
    /// The wire code that best describes this error.
    pub fn code(&self) -> Code {
        match self {
            Error::Status(status) => status.code(),
            Error::DeadlineExceeded => Code::DeadlineExceeded,
            Error::Connect { .. }
            | Error::Tls { .. }
            | Error::Unavailable(_)
            | Error::ConnectionLost => Code::Unavailable,
            Error::TooLarge(_) => Code::ResourceExhausted,
            Error::Decode(_) => Code::Internal,
        }
    }

    /// Whether the call certainly did not run, so it may be sent again (to another instance)
    /// even when the method is not idempotent.
    pub fn is_retry_safe(&self) -> bool {
        match self {
            Error::Status(status) => status.code().is_retry_safe(),
            Error::Connect { .. } | Error::Tls { .. } | Error::Unavailable(_) => true,
            Error::DeadlineExceeded
            | Error::ConnectionLost
            | Error::TooLarge(_)
            | Error::Decode(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_connections_are_not_retry_safe_but_unsent_calls_are() {
        assert!(!Error::ConnectionLost.is_retry_safe());
        assert_eq!(Error::ConnectionLost.code(), Code::Unavailable);
        assert!(Error::Unavailable("backoff").is_retry_safe());
        assert!(Error::Status(Status::unavailable("draining")).is_retry_safe());
        assert!(!Error::Status(Status::internal("boom")).is_retry_safe());
        let tls = Error::Tls {
            addr: "10.0.0.1:6101".into(),
            reason: "certificate not valid for name".into(),
        };
        assert!(tls.is_retry_safe());
        assert_eq!(tls.code(), Code::Unavailable);
    }
}

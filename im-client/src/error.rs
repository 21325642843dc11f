//! What can go wrong with a call, and whether trying again may help.

use std::time::Duration;

use im_proto::client::Code;

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The gateway refused the command; `message` is meant for people.
    #[error("{message}")]
    Server {
        /// The status code (gRPC's numbers).
        code: Code,
        /// The gateway's explanation.
        message: String,
        /// Whether the same request may succeed later.
        retryable: bool,
    },
    /// The connection is down (a reconnect is under way); non-send calls are not queued.
    #[error("not connected to the gateway")]
    Disconnected,
    /// No reply came within the request timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The client was shut down.
    #[error("the client is closed")]
    Closed,
    /// Too many sends wait for their ack; see `Options::max_outbox`.
    #[error("too many messages wait for their acknowledgement")]
    OutboxFull,
    /// The reply's body was not the one this command is answered with.
    #[error("unexpected reply from the gateway: {0}")]
    UnexpectedReply(&'static str),
    /// The server address could not be understood.
    #[error("invalid server address {address:?}: {reason}")]
    Address {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// TLS could not be set up: a bad CA file, or a host no certificate can name.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The transport failed (connect, read or write).
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
}

impl Error {
    /// The gateway's status code, for a [`Error::Server`] error.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether sending the same request again (after a pause) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Server { retryable, .. } => *retryable,
            Error::Disconnected | Error::Timeout(_) | Error::OutboxFull => true,
            Error::Transport(_) => true,
            Error::Closed | Error::UnexpectedReply(_) | Error::Address { .. } | Error::Tls(_) => {
                false
            }
        }
    }

    pub(crate) fn from_wire(error: im_proto::client::Error) -> Error {
        Error::Server {
            code: Code::try_from(error.code).unwrap_or(Code::Unknown),
            message: error.message,
            retryable: error.retryable,
        }
    }
}

//! The codecs: one command set, three encodings.
//!
//! A TCP frame is `im_proto::codec` (u32 length + protobuf); a WebSocket binary frame is the
//! protobuf alone; a WebSocket text frame is the protobuf JSON mapping. A message pushed to
//! many connections is encoded at most once per encoding ([`Encoded`]) and the bytes are
//! shared.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use im_proto::client::{Code, Error, Request, ServerMessage, server_message::Body};
use prost::Message as _;

/// How a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// A length-prefixed protobuf frame on TCP.
    Frame,
    /// Protobuf in a WebSocket binary frame.
    Binary,
    /// Protobuf JSON in a WebSocket text frame.
    Json,
}

/// A server message with its encodings, made on first use and then shared.
#[derive(Debug)]
pub(crate) struct Encoded {
    message: ServerMessage,
    framed: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

impl Encoded {
    pub(crate) fn new(message: ServerMessage) -> Arc<Encoded> {
        Arc::new(Encoded {
            message,
            framed: OnceLock::new(),
            json: OnceLock::new(),
        })
    }

    /// A push (id 0) of `body`.
    pub(crate) fn push(body: Body) -> Arc<Encoded> {
        Encoded::new(ServerMessage {
            id: 0,
            error: None,
            body: Some(body),
        })
    }

    pub(crate) fn message(&self) -> &ServerMessage {
        &self.message
    }

    /// The bytes of this message in `form`.
    pub(crate) fn bytes(&self, form: Form) -> Bytes {
        match form {
            Form::Frame => self.framed().clone(),
            Form::Binary => self.framed().slice(im_proto::codec::PREFIX..),
            Form::Json => self
                .json
                .get_or_init(|| {
                    // The generated serde of a message cannot fail: it has no maps with
                    // non-string keys and no floats that JSON cannot carry.
                    serde_json::to_vec(&self.message).map_or_else(|_| Bytes::new(), Bytes::from)
                })
                .clone(),
        }
    }

    fn framed(&self) -> &Bytes {
        self.framed
            .get_or_init(|| im_proto::codec::frame(&self.message))
    }
}

/// Why a request could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("not a valid request: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("not a valid request: {0}")]
    Json(#[from] serde_json::Error),
}

/// Decodes one request in `form` (the TCP prefix already taken off).
pub(crate) fn decode(form: Form, bytes: &[u8]) -> Result<Request, DecodeError> {
    Ok(match form {
        Form::Frame | Form::Binary => Request::decode(bytes)?,
        Form::Json => serde_json::from_slice(bytes)?,
    })
}

/// A client-facing error.
pub(crate) fn error(code: Code, message: impl Into<String>, retryable: bool) -> Error {
    Error {
        code: code as i32,
        message: message.into(),
        retryable,
    }
}

/// The reply to request `id` that failed with `error`.
pub(crate) fn failure(id: u64, error: Error) -> ServerMessage {
    ServerMessage {
        id,
        error: Some(error),
        body: None,
    }
}

/// What a client is told when a service call fails: the service's own message for a
/// status it returned (services write those for clients), a generic one for transport
/// failures, whose details stay in the gateway's log.
pub(crate) fn rpc_error(err: &mprpc::Error) -> Error {
    let code = err.code();
    let message = match err {
        mprpc::Error::Status(status) if code != mprpc::Code::Internal => status.message(),
        mprpc::Error::Status(_) | mprpc::Error::Decode(_) => "internal error",
        mprpc::Error::DeadlineExceeded => "the service did not answer in time",
        mprpc::Error::TooLarge(_) => "request too large",
        _ => "service unavailable, try again",
    };
    let retryable = matches!(
        code,
        mprpc::Code::Unavailable
            | mprpc::Code::ResourceExhausted
            | mprpc::Code::DeadlineExceeded
            | mprpc::Code::Aborted
    );
    error(
        Code::try_from(code as i32).unwrap_or(Code::Unknown),
        message,
        retryable,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_proto::client::{Pong, request::Command};

    #[test]
    fn one_message_three_forms() {
        let encoded = Encoded::push(Body::Pong(Pong { server_time_ms: 5 }));
        let framed = encoded.bytes(Form::Frame);
        let binary = encoded.bytes(Form::Binary);
        assert_eq!(&framed[4..], &binary[..]);
        assert_eq!(ServerMessage::decode(binary).unwrap(), *encoded.message());
        let json = encoded.bytes(Form::Json);
        assert_eq!(&json[..], br#"{"pong":{"serverTimeMs":"5"}}"#);
    }

    #[test]
    fn json_and_protobuf_requests_decode_alike() {
        let json = decode(Form::Json, br#"{"id":"3","ping":{}}"#).unwrap();
        assert_eq!(json.id, 3);
        assert!(matches!(json.command, Some(Command::Ping(_))));
        let binary = decode(Form::Binary, &json.encode_to_vec()).unwrap();
        assert_eq!(binary, json);
        assert!(decode(Form::Json, b"{nope").is_err());
        assert!(decode(Form::Binary, &[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn transport_failures_say_nothing_of_the_inside() {
        let err = rpc_error(&mprpc::Error::Status(mprpc::Status::internal(
            "SELECT * FROM secrets",
        )));
        assert_eq!(err.message, "internal error");
        let err = rpc_error(&mprpc::Error::Status(mprpc::Status::not_found(
            "no such user",
        )));
        assert_eq!(err.message, "no such user");
        assert_eq!(err.code, Code::NotFound as i32);
        assert!(rpc_error(&mprpc::Error::Unavailable("backoff")).retryable);
    }
}

//! The outcome of a call as it crosses the wire.

use std::fmt;

/// The closed set of status codes a response carries.
///
/// Numbered as in `proto/mprpc.proto` (and as gRPC's codes). Match on it; each code knows
/// whether a call that failed with it may be sent again ([`Code::is_retry_safe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Code {
    /// The call succeeded.
    #[default]
    Ok = 0,
    /// The caller cancelled the call.
    Cancelled = 1,
    /// An error that fits no other code.
    Unknown = 2,
    /// The request is malformed: it does not decode, or a field is out of its domain.
    InvalidArgument = 3,
    /// The deadline passed before the call completed.
    DeadlineExceeded = 4,
    /// A requested entity does not exist.
    NotFound = 5,
    /// The entity a call tried to create exists already.
    AlreadyExists = 6,
    /// The caller is known but may not do this.
    PermissionDenied = 7,
    /// The server shed the call before starting it because it is overloaded.
    ResourceExhausted = 8,
    /// The system is not in the state the call requires.
    FailedPrecondition = 9,
    /// The call was aborted by a conflict (e.g. a concurrent update).
    Aborted = 10,
    /// A value is past the valid range.
    OutOfRange = 11,
    /// No such service or method on this server.
    Unimplemented = 12,
    /// An invariant broke inside the server; details are in the server's logs.
    Internal = 13,
    /// The server did not start the call (shutting down, not connected, not ready).
    Unavailable = 14,
    /// Unrecoverable data loss.
    DataLoss = 15,
    /// The caller did not prove who it is.
    Unauthenticated = 16,
}

impl Code {
    /// Whether a call that failed with this code was certainly not executed, so sending it
    /// again (preferably to another instance) cannot apply it twice.
    ///
    /// Servers return [`Code::Unavailable`] and [`Code::ResourceExhausted`] only for calls
    /// they did not start; that is what makes these two safe.
    pub fn is_retry_safe(self) -> bool {
        matches!(self, Code::Unavailable | Code::ResourceExhausted)
    }

    /// The code for a wire value; values outside the known set read as [`Code::Unknown`].
    pub fn from_u32(value: u32) -> Code {
        match value {
            0 => Code::Ok,
            1 => Code::Cancelled,
            3 => Code::InvalidArgument,
            4 => Code::DeadlineExceeded,
            5 => Code::NotFound,
            6 => Code::AlreadyExists,
            7 => Code::PermissionDenied,
            8 => Code::ResourceExhausted,
            9 => Code::FailedPrecondition,
            10 => Code::Aborted,
            11 => Code::OutOfRange,
            12 => Code::Unimplemented,
            13 => Code::Internal,
            14 => Code::Unavailable,
            15 => Code::DataLoss,
            16 => Code::Unauthenticated,
            _ => Code::Unknown,
        }
    }

    /// The name used in `proto/mprpc.proto`, without the `STATUS_CODE_` prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A non-OK outcome: a [`Code`] and a message meant for the caller.
///
/// Handlers return it to fail a call. The message crosses the wire as is, so it must not
/// carry internals (SQL text, file paths); log those on the server instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    code: Code,
    message: String,
}

macro_rules! constructors {
    ($($name:ident => $code:ident),* $(,)?) => {
        $(
            #[doc = concat!("A status with [`Code::", stringify!($code), "`].")]
            pub fn $name(message: impl Into<String>) -> Status {
                Status::new(Code::$code, message)
            }
        )*
    };
}

impl Status {
    /// A status with any code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    constructors! {
        cancelled => Cancelled,
        unknown => Unknown,
        invalid_argument => InvalidArgument,
        deadline_exceeded => DeadlineExceeded,
        not_found => NotFound,
        already_exists => AlreadyExists,
        permission_denied => PermissionDenied,
        resource_exhausted => ResourceExhausted,
        failed_precondition => FailedPrecondition,
        aborted => Aborted,
        out_of_range => OutOfRange,
        unimplemented => Unimplemented,
        internal => Internal,
        unavailable => Unavailable,
        data_loss => DataLoss,
        unauthenticated => Unauthenticated,
    }

    /// The code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The message sent to the caller.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

impl std::error::Error for Status {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_wire_value() {
        for value in 0..=16u32 {
            assert_eq!(Code::from_u32(value) as u32, value);
        }
        assert_eq!(Code::from_u32(99), Code::Unknown);
    }

    #[test]
    fn only_not_started_codes_are_retry_safe() {
        let safe: Vec<Code> = (0..=16)
            .map(Code::from_u32)
            .filter(|c| c.is_retry_safe())
            .collect();
        assert_eq!(safe, [Code::ResourceExhausted, Code::Unavailable]);
    }
}

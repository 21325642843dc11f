//! Errors of the storage and bus layers, and how they become wire statuses.
//!
//! Handlers return [`mprpc::Status`]; a [`StoreError`] maps onto one at the boundary
//! (`?` works through the `From` impl) without leaking SQL text or addresses to callers:
//! backend failures are logged here and cross the wire as a bare `ABORTED`. Not
//! `UNAVAILABLE`: mprpc resends that to another instance as a call that never started, and a
//! handler whose database failed mid-call may have written part of its work (a commit whose
//! answer was lost). The caller decides: a send, keyed by its client_msg_id, is safe to
//! repeat.

use mprpc::Status;

/// A failure of a store (database) or bus (Redis / in-process) operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The row or key does not exist.
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// A uniqueness rule refused the write (a taken name, a repeated request).
    #[error("already exists: {0}")]
    Conflict(&'static str),
    /// The request is not allowed by the data's state (e.g. answering a settled request).
    #[error("{0}")]
    Precondition(String),
    /// The database failed or could not be reached.
    #[error("database: {0}")]
    Database(#[source] sqlx::Error),
    /// Redis failed or could not be reached.
    #[error("redis: {0}")]
    Redis(#[source] redis::RedisError),
    /// A write the database would refuse for its size: a message larger than the server's
    /// `max_allowed_packet`. (Sent anyway, the server may drop the connection rather than
    /// answer, which would look like an outage.)
    #[error("too large: {0}")]
    TooLarge(String),
    /// Stored data could not be read back (a corrupt row or entry).
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether repeating the operation may succeed (the backend was unavailable).
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Database(_) | StoreError::Redis(_))
    }

    /// Whether the database answered and refused the statement for what it held (a value
    /// too long, a packet over `max_allowed_packet`, a constraint), as opposed to being
    /// unreachable: the same statement would fail again, and a part of it may not.
    pub fn is_refused(&self) -> bool {
        matches!(
            self,
            StoreError::Database(sqlx::Error::Database(_)) | StoreError::TooLarge(_)
        )
    }

    /// Whether the database refused a write because a unique key already holds the value.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Conflict(_) => true,
            StoreError::Database(sqlx::Error::Database(db)) => db.is_unique_violation(),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> StoreError {
        match err {
            sqlx::Error::RowNotFound => StoreError::NotFound("row"),
            other => StoreError::Database(other),
        }
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(err: redis::RedisError) -> StoreError {
        StoreError::Redis(err)
    }
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Status {
        match err {
            StoreError::NotFound(what) => Status::not_found(format!("{what} not found")),
            StoreError::Conflict(what) => Status::already_exists(format!("{what} already exists")),
            StoreError::Precondition(why) => Status::failed_precondition(why),
            err @ (StoreError::Database(_) | StoreError::Redis(_)) => {
                tracing::warn!(cause = %err, "backend unavailable");
                Status::aborted("storage unavailable; try again")
            }
            StoreError::TooLarge(why) => {
                tracing::warn!(cause = %why, "write too large for the database");
                Status::internal("too large for the database")
            }
            StoreError::Corrupt(why) => {
                tracing::error!(cause = %why, "corrupt data");
                Status::internal("internal error")
            }
        }
    }
}

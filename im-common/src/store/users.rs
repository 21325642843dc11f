//! Users, sessions, friend requests, friends and blocks.
//!
//! - A user's login name is unique (byte for byte on both engines); a second user with the
//!   same name is [`StoreError::Conflict`]`("user name")`.
//! - Profile reads and search go to [`Sql::read`] (they tolerate replication lag); the
//!   password hash, sessions and the social graph are read from the primary, since a login
//!   right after registering, or a check right after accepting, must see the write.
//! - A friendship is two rows in `friends`, one per direction, written and removed together.
//! - A friend request is settled once: accepting inserts both friend rows in the same
//!   transaction; answering a request that is no longer pending is
//!   [`StoreError::Precondition`].
//! - Blocking removes the friendship and rejects the pending requests between the two users,
//!   in one transaction.
//! - [`Sql::visible`] says which users another may look up ([`Scope`]): the relationships,
//!   read from the primary.

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Row};

use super::values::{i64_of, marks, u64_of};
use super::{Dialect, Sql};
use crate::error::StoreError;
use crate::ids::now_ms;
use crate::proto::{FriendRequest, FriendRequestState, UserProfile};

/// A user to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// Login name (validated by the caller).
    pub name: String,
    /// The password's PHC hash string.
    pub password_hash: String,
    /// Display name.
    pub nickname: String,
}

/// Profile fields to change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileUpdate {
    /// New display name.
    pub nickname: Option<String>,
    /// New avatar reference.
    pub avatar: Option<String>,
    /// New bio.
    pub bio: Option<String>,
}

/// What a login checks a password against, and the profile it then returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user's profile (read from the primary, like the hash).
    pub profile: UserProfile,
    /// The stored PHC hash string.
    pub password_hash: String,
}

/// A login of one user on one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Random, unguessable id.
    pub session_id: String,
    /// The user who logged in.
    pub user_id: u64,
    /// The device the login was for.
    pub device_id: String,
    /// When it was created (ms).
    pub created_at_ms: i64,
    /// When its token expires (ms).
    pub expires_at_ms: i64,
    /// When it was revoked (ms), if it was.
    pub revoked_at_ms: Option<i64>,
}

impl Session {
    /// Whether the session is neither revoked nor expired at `now_ms`.
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.revoked_at_ms.is_none() && self.expires_at_ms > now_ms
    }
}

/// Which friend requests of a user to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Requests sent to the user.
    Incoming,
    /// Requests the user sent.
    Outgoing,
}

/// Users, sessions and the social graph. [`Sql`] implements it on MySQL and SQLite.
pub trait UserStore: Send + Sync {
    /// Creates a user; its profile starts with an empty avatar and bio.
    ///
    /// # Errors
    /// [`StoreError::Conflict`]`("user name")` when the name is taken.
    fn create_user(
        &self,
        user: NewUser,
    ) -> impl Future<Output = Result<UserProfile, StoreError>> + Send;

    /// The profile of user `id` (from the reader).
    fn user(&self, id: u64)
    -> impl Future<Output = Result<Option<UserProfile>, StoreError>> + Send;

    /// The profile of the user whose login name is exactly `name` (from the reader).
    fn user_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<UserProfile>, StoreError>> + Send;

    /// The profiles of `ids` that exist, in no particular order (from the reader).
    fn users(
        &self,
        ids: &[u64],
    ) -> impl Future<Output = Result<Vec<UserProfile>, StoreError>> + Send;

    /// Changes the fields `update` sets and returns the profile after the change.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the user does not exist.
    fn update_profile(
        &self,
        id: u64,
        update: ProfileUpdate,
    ) -> impl Future<Output = Result<UserProfile, StoreError>> + Send;

    /// The profile and password hash of the user named exactly `name`.
    fn credentials(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Credentials>, StoreError>> + Send;

    /// Records a new session.
    ///
    /// # Errors
    /// [`StoreError::Conflict`]`("session")` when the id is taken.
    fn create_session(
        &self,
        session: Session,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The session `id`, revoked or not.
    fn session(&self, id: &str)
    -> impl Future<Output = Result<Option<Session>, StoreError>> + Send;

    /// The sessions among `ids` that exist, revoked or not, in no particular order (from
    /// the primary: a revocation must be seen at once).
    fn sessions(
        &self,
        ids: &[String],
    ) -> impl Future<Output = Result<Vec<Session>, StoreError>> + Send;

    /// Revokes `user`'s session `id` at `at_ms` (a revoked session keeps its first
    /// revocation time). Returns whether `user` has such a session.
    fn revoke_session(
        &self,
        user: u64,
        id: &str,
        at_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Revokes every session of `user` still active; returns how many.
    fn revoke_sessions(
        &self,
        user: u64,
        at_ms: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Records a pending request from `from` to `to`. When one is already pending in that
    /// direction, it is returned instead of a second one.
    fn create_friend_request(
        &self,
        from: u64,
        to: u64,
        message: &str,
    ) -> impl Future<Output = Result<FriendRequest, StoreError>> + Send;

    /// The friend request `id`, in whatever state.
    fn friend_request(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Option<FriendRequest>, StoreError>> + Send;

    /// The request pending from `from` to `to`, if any.
    fn pending_request(
        &self,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Option<FriendRequest>, StoreError>> + Send;

    /// Up to `limit` of `user`'s requests in `direction`, newest first, in every state.
    fn friend_requests(
        &self,
        user: u64,
        direction: Direction,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<FriendRequest>, StoreError>> + Send;

    /// Accepts or rejects the pending request `id` and returns it settled. Accepting makes
    /// the two users friends (and settles any other request pending between them as
    /// accepted) in the same transaction.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown request; [`StoreError::Precondition`] for
    /// one that is no longer pending.
    fn settle_friend_request(
        &self,
        id: u64,
        accept: bool,
    ) -> impl Future<Output = Result<FriendRequest, StoreError>> + Send;

    /// The ids of `user`'s friends, ascending.
    fn list_friends(&self, user: u64) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// Whether `a` and `b` are friends.
    fn are_friends(&self, a: u64, b: u64) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends the friendship of `a` and `b` (both rows); returns whether there was one.
    fn remove_friend(
        &self,
        a: u64,
        b: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// `user` blocks `target`: their friendship ends and the requests pending between them
    /// are rejected. Blocking twice is the same as once.
    fn block(&self, user: u64, target: u64) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// `user` unblocks `target`; returns whether `target` was blocked.
    fn unblock(
        &self,
        user: u64,
        target: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The ids `user` blocked, ascending.
    fn list_blocked(&self, user: u64) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// Whether `by` blocked `target`.
    fn is_blocked(
        &self,
        by: u64,
        target: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

const USER_COLUMNS: &str = "user_id, name, nickname, avatar, bio, created_at";
const REQUEST_COLUMNS: &str = "request_id, from_user, to_user, message, state, created_at";
const SESSION_COLUMNS: &str = "session_id, user_id, device_id, created_at, expires_at, revoked_at";
/// Most ids in one `IN (…)` list.
const IN_CHUNK: usize = 500;

fn profile_of(row: &AnyRow) -> Result<UserProfile, StoreError> {
    Ok(UserProfile {
        user_id: u64_of(row, "user_id")?,
        name: row.try_get("name")?,
        nickname: row.try_get("nickname")?,
        avatar: row.try_get("avatar")?,
        bio: row.try_get("bio")?,
        created_at_ms: row.try_get("created_at")?,
    })
}

fn request_of(row: &AnyRow) -> Result<FriendRequest, StoreError> {
    let state: i64 = row.try_get("state")?;
    Ok(FriendRequest {
        request_id: u64_of(row, "request_id")?,
        from_user_id: u64_of(row, "from_user")?,
        to_user_id: u64_of(row, "to_user")?,
        message: row.try_get("message")?,
        state: i32::try_from(state).map_err(|_| StoreError::Corrupt("request state".into()))?,
        created_at_ms: row.try_get("created_at")?,
    })
}

fn session_of(row: &AnyRow) -> Result<Session, StoreError> {
    Ok(Session {
        session_id: row.try_get("session_id")?,
        user_id: u64_of(row, "user_id")?,
        device_id: row.try_get("device_id")?,
        created_at_ms: row.try_get("created_at")?,
        expires_at_ms: row.try_get("expires_at")?,
        revoked_at_ms: row.try_get("revoked_at")?,
    })
}

fn ids_of(rows: Vec<i64>) -> Vec<u64> {
    rows.into_iter()
        .filter_map(|id| u64::try_from(id).ok())
        .collect()
}

fn state_name(state: i32) -> &'static str {
    match FriendRequestState::try_from(state) {
        Ok(FriendRequestState::Pending) => "pending",
        Ok(FriendRequestState::Accepted) => "accepted",
        Ok(FriendRequestState::Rejected) => "rejected",
        _ => "settled",
    }
}

/// `statement` (an `INSERT`) made to return the new row's `column` on SQLite, whose `Any`
/// driver reports no last insert id; MySQL reports it.
fn returning(dialect: Dialect, statement: &'static str, column: &'static str) -> String {
    match dialect {
        Dialect::MySql => statement.to_owned(),
        Dialect::Sqlite => format!("{statement} RETURNING {column}"),
    }
}

/// Runs an `INSERT` built with [`returning`] and gives the new row's id.
async fn inserted_id<'c, E>(
    dialect: Dialect,
    query: Query<'_, Any, AnyArguments>,
    executor: E,
) -> Result<u64, StoreError>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    let id = match dialect {
        Dialect::Sqlite => query.fetch_one(executor).await?.try_get::<i64, _>(0)?,
        Dialect::MySql => query
            .execute(executor)
            .await?
            .last_insert_id()
            .ok_or_else(|| StoreError::Corrupt("no insert id".into()))?,
    };
    u64::try_from(id).map_err(|_| StoreError::Corrupt("negative insert id".into()))
}

fn conflict_as(err: sqlx::Error, what: &'static str) -> StoreError {
    let err = StoreError::from(err);
    if err.is_unique_violation() {
        StoreError::Conflict(what)
    } else {
        err
    }
}

const PENDING: i64 = FriendRequestState::Pending as i64;
const ACCEPTED: i64 = FriendRequestState::Accepted as i64;
const REJECTED: i64 = FriendRequestState::Rejected as i64;

/// Settles every request pending between `a` and `b`, either direction, as `state`.
const SETTLE_BETWEEN: &str = "UPDATE friend_requests SET state = ?, updated_at = ? \
    WHERE state = ? AND ((from_user = ? AND to_user = ?) OR (from_user = ? AND to_user = ?))";

impl Sql {
    async fn ids(&self, statement: &'static str, key: u64) -> Result<Vec<u64>, StoreError> {
        let rows: Vec<i64> = sqlx::query_scalar(statement)
            .bind(i64_of(key))
            .fetch_all(self.pool())
            .await?;
        Ok(ids_of(rows))
    }

    async fn exists(&self, statement: &'static str, a: u64, b: u64) -> Result<bool, StoreError> {
        let row = sqlx::query(statement)
            .bind(i64_of(a))
            .bind(i64_of(b))
            .fetch_optional(self.pool())
            .await?;
        Ok(row.is_some())
    }
}

mod sql;
mod visible;

pub use visible::Scope;

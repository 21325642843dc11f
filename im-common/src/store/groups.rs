//! Groups, their members and join requests.
//!
//! A group owns a conversation, `g:<group id>`, which the message store numbers and syncs.
//! Every membership change keeps that conversation's `conv_members` rows in step in the same
//! transaction: creating a group adds its `conversations` row and one `conv_members` row per
//! member; a member who joins later starts with their read cursor at the conversation's last
//! seq (nothing unread); leaving, being kicked and dismissal delete the member's rows. A
//! dismissed group keeps its row (with `dismissed_at`) and its messages, has no members,
//! and is not found by any read here.
//!
//! Writes that read before they write lock the group's row first (`FOR UPDATE` on MySQL;
//! SQLite's write transactions lock the database at `BEGIN`), so that concurrent
//! membership changes of one group take turns and size limits hold.
//!
//! Reads that must see the latest writes (permission checks, `group`, `member`,
//! `member_ids`) go to the primary; member pages, a user's groups and
//! [`GroupStore::group_from_replica`] go to the reader (the replica when configured).

mod manage;
mod read;
mod write;

use self::read::{CHUNK, i64_of, list, read_group};
use super::Sql;
use crate::error::StoreError;
use crate::proto::{GroupInfo, GroupJoinRequest, GroupMember, GroupRole, JoinPolicy};

/// A group to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGroup {
    /// Its name.
    pub name: String,
    /// Its description.
    pub description: String,
    /// Who may join.
    pub join_policy: JoinPolicy,
    /// The creator, who becomes the owner.
    pub owner: u64,
    /// The other first members (role MEMBER); the owner and repeats are skipped.
    pub members: Vec<u64>,
}

/// Changes to a group's information; `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupUpdate {
    /// A new name.
    pub name: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// A new join policy.
    pub join_policy: Option<JoinPolicy>,
}

/// Where a join request left its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinState {
    /// Already a member: nothing was requested.
    Member,
    /// A request waits for an owner or admin (a repeated request keeps the first).
    Requested,
}

/// What leaving did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The user left.
    Left,
    /// The user was the owner and the last member: the group is dismissed.
    Dismissed,
}

/// Groups and their members.
pub trait GroupStore: Send + Sync {
    /// Creates a group, its conversation and its members (the owner as OWNER, the others
    /// as MEMBER), all in one transaction.
    fn create_group(
        &self,
        group: &NewGroup,
    ) -> impl Future<Output = Result<GroupInfo, StoreError>> + Send;

    /// The group with its member count, from the primary; `None` when missing or
    /// dismissed.
    fn group(
        &self,
        group: u64,
    ) -> impl Future<Output = Result<Option<GroupInfo>, StoreError>> + Send;

    /// As [`GroupStore::group`], from the reader (may lag behind the primary).
    fn group_from_replica(
        &self,
        group: u64,
    ) -> impl Future<Output = Result<Option<GroupInfo>, StoreError>> + Send;

    /// `user`'s membership of `group`, from the primary; `None` for a non-member (every
    /// member of a dismissed group is removed).
    fn member(
        &self,
        group: u64,
        user: u64,
    ) -> impl Future<Output = Result<Option<GroupMember>, StoreError>> + Send;

    /// The ids of a group's members in ascending order, from the primary.
    fn member_ids(&self, group: u64) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// Up to `limit` members with a user id above `after_user`, in user id order, and
    /// whether more follow; from the reader.
    fn members(
        &self,
        group: u64,
        after_user: u64,
        limit: u32,
    ) -> impl Future<Output = Result<(Vec<GroupMember>, bool), StoreError>> + Send;

    /// The live groups `user` belongs to, by group id; from the reader.
    fn groups_of(
        &self,
        user: u64,
    ) -> impl Future<Output = Result<Vec<GroupInfo>, StoreError>> + Send;

    /// Which of `ids` name existing users (each once, ascending).
    fn existing_users(
        &self,
        ids: &[u64],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// Which of `ids` blocked `target` (each once, ascending): users `target` may not add
    /// to a group.
    fn blockers(
        &self,
        target: u64,
        ids: &[u64],
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// Adds `users` as MEMBERs, skipping those already in; returns the ones added, in the
    /// order given. Their pending join requests are settled.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for a missing or dismissed group;
    /// [`StoreError::Precondition`] when the group would have more than `max_members`
    /// (nobody is added then).
    fn add_members(
        &self,
        group: u64,
        users: &[u64],
        max_members: u64,
    ) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// Records `user`'s request to join, unless they are a member.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for a missing or dismissed group.
    fn request_join(
        &self,
        group: u64,
        user: u64,
        message: &str,
    ) -> impl Future<Output = Result<JoinState, StoreError>> + Send;

    /// The oldest `limit` pending join requests of a group, from the primary.
    fn join_requests(
        &self,
        group: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<GroupJoinRequest>, StoreError>> + Send;

    /// Settles `user`'s join request: accepted, they become a MEMBER (if not one already);
    /// refused, the request is dropped.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the group or the request is missing;
    /// [`StoreError::Precondition`] when accepting would exceed `max_members` (the request
    /// stays).
    fn respond_join(
        &self,
        group: u64,
        user: u64,
        accept: bool,
        max_members: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// `user` leaves; `None` when they are not a member. The owner may leave only as the
    /// last member, which dismisses the group.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for a missing or dismissed group;
    /// [`StoreError::Precondition`] when the owner leaves other members behind.
    fn leave(
        &self,
        group: u64,
        user: u64,
    ) -> impl Future<Output = Result<Option<Departure>, StoreError>> + Send;

    /// Removes `user` if their role is at most `up_to` (never the owner); returns whether
    /// they were removed.
    fn remove_member(
        &self,
        group: u64,
        user: u64,
        up_to: GroupRole,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Makes member `user` a MEMBER or an ADMIN.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for a non-member; [`StoreError::Precondition`] for the
    /// owner (ownership moves only by [`GroupStore::transfer_ownership`]) or a role other
    /// than MEMBER and ADMIN.
    fn set_role(
        &self,
        group: u64,
        user: u64,
        role: GroupRole,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes member `to` the owner and the owner `from` an ADMIN, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the group is gone or `to` is not a member;
    /// [`StoreError::Precondition`] when `from` is no longer the owner.
    fn transfer_ownership(
        &self,
        group: u64,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Mutes `user` until `until_ms` (0: unmutes) if their role is at most `up_to`;
    /// returns whether they were.
    fn mute(
        &self,
        group: u64,
        user: u64,
        until_ms: i64,
        up_to: GroupRole,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Mutes or unmutes the whole group (its owner and admins still post); returns whether
    /// the group is live.
    fn set_mute_all(
        &self,
        group: u64,
        muted: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Applies `update`; returns the group afterwards (`None` when missing or dismissed).
    fn update_group(
        &self,
        group: u64,
        update: &GroupUpdate,
    ) -> impl Future<Output = Result<Option<GroupInfo>, StoreError>> + Send;

    /// Dismisses a group: marks it, removes every member and join request; returns whether
    /// it was live.
    fn dismiss(&self, group: u64) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

impl GroupStore for Sql {
    async fn create_group(&self, group: &NewGroup) -> Result<GroupInfo, StoreError> {
        self.insert_group(group).await
    }

    async fn group(&self, group: u64) -> Result<Option<GroupInfo>, StoreError> {
        read_group(self.pool(), group).await
    }

    async fn group_from_replica(&self, group: u64) -> Result<Option<GroupInfo>, StoreError> {
        self.read(|pool| async move { read_group(&pool, group).await })
            .await
    }

    async fn member(&self, group: u64, user: u64) -> Result<Option<GroupMember>, StoreError> {
        self.read_member(group, user).await
    }

    async fn member_ids(&self, group: u64) -> Result<Vec<u64>, StoreError> {
        self.read_member_ids(group).await
    }

    async fn members(
        &self,
        group: u64,
        after_user: u64,
        limit: u32,
    ) -> Result<(Vec<GroupMember>, bool), StoreError> {
        self.read_members(group, after_user, limit).await
    }

    async fn groups_of(&self, user: u64) -> Result<Vec<GroupInfo>, StoreError> {
        self.read_groups_of(user).await
    }

    async fn existing_users(&self, ids: &[u64]) -> Result<Vec<u64>, StoreError> {
        self.read_existing_users(ids).await
    }

    async fn blockers(&self, target: u64, ids: &[u64]) -> Result<Vec<u64>, StoreError> {
        self.read_blockers(target, ids).await
    }

    async fn add_members(
        &self,
        group: u64,
        users: &[u64],
        max_members: u64,
    ) -> Result<Vec<u64>, StoreError> {
        self.insert_members(group, users, max_members).await
    }

    async fn request_join(
        &self,
        group: u64,
        user: u64,
        message: &str,
    ) -> Result<JoinState, StoreError> {
        self.insert_join_request(group, user, message).await
    }

    async fn join_requests(
        &self,
        group: u64,
        limit: u32,
    ) -> Result<Vec<GroupJoinRequest>, StoreError> {
        self.read_join_requests(group, limit).await
    }

    async fn respond_join(
        &self,
        group: u64,
        user: u64,
        accept: bool,
        max_members: u64,
    ) -> Result<(), StoreError> {
        self.settle_join_request(group, user, accept, max_members)
            .await
    }

    async fn leave(&self, group: u64, user: u64) -> Result<Option<Departure>, StoreError> {
        self.delete_self(group, user).await
    }

    async fn remove_member(
        &self,
        group: u64,
        user: u64,
        up_to: GroupRole,
    ) -> Result<bool, StoreError> {
        self.delete_member(group, user, up_to).await
    }

    async fn set_role(&self, group: u64, user: u64, role: GroupRole) -> Result<(), StoreError> {
        self.update_role(group, user, role).await
    }

    async fn transfer_ownership(&self, group: u64, from: u64, to: u64) -> Result<(), StoreError> {
        self.move_ownership(group, from, to).await
    }

    async fn mute(
        &self,
        group: u64,
        user: u64,
        until_ms: i64,
        up_to: GroupRole,
    ) -> Result<bool, StoreError> {
        self.update_mute(group, user, until_ms, up_to).await
    }

    async fn set_mute_all(&self, group: u64, muted: bool) -> Result<bool, StoreError> {
        self.update_mute_all(group, muted).await
    }

    async fn update_group(
        &self,
        group: u64,
        update: &GroupUpdate,
    ) -> Result<Option<GroupInfo>, StoreError> {
        self.update_info(group, update).await?;
        read_group(self.pool(), group).await
    }

    async fn dismiss(&self, group: u64) -> Result<bool, StoreError> {
        self.dismiss_group(group).await
    }
}

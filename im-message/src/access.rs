//! Who may post to and read which conversation.
//!
//! - direct: the recipient exists, has not blocked the sender, and (when `friends_only`,
//!   the default) is the sender's friend; only the two users read it;
//! - group: only members post and read; a muted member cannot post, nor can a plain member
//!   while the group is muted as a whole;
//! - typing: where the user could post a 1:1 message; in a group, any member.
//!
//! Friend and block lists are read through the bus cache, which the user service
//! invalidates on every change (after its commit); a read that began before the change
//! never fills the cache after the invalidation, so a block holds from the moment it is
//! acknowledged. A cache that fails or was flushed only costs a database read.

use std::time::Duration;

use im_common::bus::{Bus, keys, read_ids_through};
use im_common::ids::{ConversationId, now_ms};
use im_common::proto::GroupRole;
use im_common::store::Sql;
use im_common::store::messages::{GroupAccess, MessageStore};
use im_common::store::users::UserStore;
use mprpc::Status;

/// How long friend and block lists stay cached (writes invalidate them sooner).
const LIST_TTL: Duration = Duration::from_secs(60);

/// Permission checks over the store and the cache.
#[derive(Clone)]
pub(crate) struct Access {
    pub(crate) sql: Sql,
    pub(crate) bus: Bus,
    pub(crate) friends_only: bool,
}

impl Access {
    /// May `sender` message `recipient`?
    pub(crate) async fn check_direct(&self, sender: u64, recipient: u64) -> Result<(), Status> {
        if self
            .cached_ids(keys::blocked(recipient), recipient, List::Blocked)
            .await?
            .contains(&sender)
        {
            return Err(Status::permission_denied(
                "the recipient does not accept messages from you",
            ));
        }
        if self.friends_only {
            if !self
                .cached_ids(keys::friends(sender), sender, List::Friends)
                .await?
                .contains(&recipient)
            {
                return Err(Status::permission_denied(
                    "you can only message your friends",
                ));
            }
        } else if !self.sql.user_exists(recipient).await? {
            return Err(Status::not_found("no such user"));
        }
        Ok(())
    }

    /// `user`'s place in `group`, or `PERMISSION_DENIED` for a non-member.
    pub(crate) async fn group_member(&self, group: u64, user: u64) -> Result<GroupAccess, Status> {
        self.sql
            .group_access(group, user)
            .await?
            .ok_or_else(|| Status::permission_denied("you are not a member of this group"))
    }

    /// May `user` post to `group`?
    pub(crate) async fn check_group_post(&self, group: u64, user: u64) -> Result<(), Status> {
        let access = self.group_member(group, user).await?;
        if access.muted_until_ms > now_ms() {
            return Err(Status::permission_denied(format!(
                "you are muted in this group until {} ms",
                access.muted_until_ms
            )));
        }
        if access.mute_all && access.role == GroupRole::Member {
            return Err(Status::permission_denied(
                "the group is muted: only its owner and admins may post",
            ));
        }
        Ok(())
    }

    /// May `user` read `conversation`?
    pub(crate) async fn check_read(
        &self,
        conversation: ConversationId,
        user: u64,
    ) -> Result<(), Status> {
        match conversation {
            ConversationId::Direct(..) if conversation.has_direct_member(user) => Ok(()),
            ConversationId::Direct(..) => {
                Err(Status::permission_denied("not a conversation of yours"))
            }
            ConversationId::Group(group) => self.group_member(group, user).await.map(|_| ()),
        }
    }

    /// May `user` tell `conversation` that they are typing? Where a message could go: the
    /// peer of a 1:1 conversation accepts the user's messages; a group has the user as a
    /// member (muted or not: typing is not posting).
    pub(crate) async fn check_typing(
        &self,
        conversation: ConversationId,
        user: u64,
    ) -> Result<(), Status> {
        match conversation {
            ConversationId::Direct(..) => match conversation.peer_of(user) {
                Some(peer) if peer != user => self.check_direct(user, peer).await,
                _ => Err(Status::permission_denied("not a conversation of yours")),
            },
            ConversationId::Group(group) => self.group_member(group, user).await.map(|_| ()),
        }
    }

    /// A friend or block list through the cache; a read that began before a change never
    /// caches the old list after the change's invalidation (see [`read_through`]).
    async fn cached_ids(&self, key: String, user: u64, list: List) -> Result<Vec<u64>, Status> {
        let load = || async move {
            match list {
                List::Friends => self.sql.list_friends(user).await,
                List::Blocked => self.sql.list_blocked(user).await,
            }
        };
        Ok(read_ids_through(self.bus.cache.as_ref(), key, LIST_TTL, load).await?)
    }
}

#[derive(Clone, Copy)]
enum List {
    Friends,
    Blocked,
}

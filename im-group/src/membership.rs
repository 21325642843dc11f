//! Who is in a group: Create, Invite, Join, join requests, Leave, Kick.

use std::collections::HashSet;

use im_common::proto::{
    CreateGroupRequest, Empty, GroupId, GroupInfo, GroupJoinRequests, GroupRole, GroupUser,
    GroupUsers, JoinPolicy, JoinReply, JoinRequest, RespondJoinRequest, UserIds,
};
use im_common::store::groups::{Departure, GroupStore, JoinState, NewGroup};
use im_common::validate::{self, MAX_NAME_BYTES, MAX_TEXT_BYTES};
use mprpc::Status;
use tracing::info;

use crate::MAX_IDS_PER_CALL;
use crate::handler::{Groups, group_id, join_policy, role_of};

impl Groups {
    pub(crate) async fn create_group(
        &self,
        me: u64,
        request: CreateGroupRequest,
    ) -> Result<GroupInfo, Status> {
        validate::non_empty_text("name", &request.name, MAX_NAME_BYTES)?;
        validate::text("description", &request.description, MAX_TEXT_BYTES)?;
        let policy = join_policy(request.join_policy)?;
        let members: Vec<u64> = self
            .addable_users(me, &request.member_ids)
            .await?
            .into_iter()
            .filter(|&user| user != me)
            .collect();
        let max = self.settings().max_members;
        if members.len() as u64 + 1 > max {
            return Err(Status::invalid_argument(format!(
                "a group has at most {max} members, its owner included; this one would have {}",
                members.len() + 1
            )));
        }
        let group = self
            .sql()
            .create_group(&NewGroup {
                name: request.name,
                description: request.description,
                join_policy: policy,
                owner: me,
                members,
            })
            .await?;
        info!(
            group = group.group_id,
            owner = me,
            members = group.member_count,
            "group created"
        );
        Ok(group)
    }

    /// The ids in `ids` that name users, each once, in the order given.
    async fn known_users(&self, ids: &[u64]) -> Result<Vec<u64>, Status> {
        if ids.len() > MAX_IDS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_IDS_PER_CALL} user ids per call, not {}",
                ids.len()
            )));
        }
        let mut known: HashSet<u64> = self.sql().existing_users(ids).await?.into_iter().collect();
        // Removing each id as it is taken keeps the first of repeats only.
        Ok(ids.iter().copied().filter(|id| known.remove(id)).collect())
    }

    /// The ids in `ids` that `me` may add to a group: users who exist and have not blocked
    /// `me`, each once, in the order given. A user who blocked `me` is skipped like an id
    /// that names nobody, so the reply does not tell the one from the other.
    async fn addable_users(&self, me: u64, ids: &[u64]) -> Result<Vec<u64>, Status> {
        let users = self.known_users(ids).await?;
        let blockers = self.sql().blockers(me, &users).await?;
        if blockers.is_empty() {
            return Ok(users);
        }
        metrics::counter!("mpim_group_adds_refused_blocked_total").increment(blockers.len() as u64);
        Ok(users
            .into_iter()
            .filter(|user| blockers.binary_search(user).is_err())
            .collect())
    }

    pub(crate) async fn invite_users(
        &self,
        me: u64,
        request: GroupUsers,
    ) -> Result<UserIds, Status> {
        let group = group_id(request.group_id)?;
        let role = self.role_in(group, me).await?;
        if role < GroupRole::Admin {
            let info = self.live_group(group).await?;
            if info.join_policy != JoinPolicy::Open as i32 {
                return Err(Status::permission_denied(
                    "only the group's owner and admins may invite into a group that needs approval",
                ));
            }
        }
        let users = self.addable_users(me, &request.user_ids).await?;
        let added = self
            .sql()
            .add_members(group, &users, self.settings().max_members)
            .await?;
        if !added.is_empty() {
            self.forget(group).await;
        }
        Ok(UserIds { user_ids: added })
    }

    pub(crate) async fn join_group(
        &self,
        me: u64,
        request: JoinRequest,
    ) -> Result<JoinReply, Status> {
        let group = group_id(request.group_id)?;
        validate::text("message", &request.message, MAX_NAME_BYTES)?;
        let info = self.live_group(group).await?;
        let joined = if info.join_policy == JoinPolicy::Open as i32 {
            let added = self
                .sql()
                .add_members(group, &[me], self.settings().max_members)
                .await?;
            if !added.is_empty() {
                self.forget(group).await;
            }
            true
        } else {
            let state = self.sql().request_join(group, me, &request.message).await?;
            state == JoinState::Member
        };
        Ok(JoinReply { joined })
    }

    pub(crate) async fn pending_requests(
        &self,
        me: u64,
        request: GroupId,
    ) -> Result<GroupJoinRequests, Status> {
        let group = group_id(request.group_id)?;
        self.manager(group, me, "see join requests").await?;
        let requests = self
            .sql()
            .join_requests(group, self.settings().max_join_requests_listed)
            .await?;
        Ok(GroupJoinRequests { requests })
    }

    pub(crate) async fn settle_request(
        &self,
        me: u64,
        request: RespondJoinRequest,
    ) -> Result<Empty, Status> {
        let group = group_id(request.group_id)?;
        let user = validate::user_id("user_id", request.user_id)?;
        self.manager(group, me, "answer join requests").await?;
        self.sql()
            .respond_join(group, user, request.accept, self.settings().max_members)
            .await?;
        if request.accept {
            self.forget(group).await;
        }
        Ok(Empty {})
    }

    pub(crate) async fn leave_group(&self, me: u64, request: GroupId) -> Result<Empty, Status> {
        let group = group_id(request.group_id)?;
        match self.sql().leave(group, me).await? {
            None => Err(Status::permission_denied(
                "you are not a member of this group",
            )),
            Some(departure) => {
                if departure == Departure::Dismissed {
                    info!(group, owner = me, "group dismissed as its last member left");
                }
                self.forget(group).await;
                Ok(Empty {})
            }
        }
    }

    pub(crate) async fn kick_member(&self, me: u64, request: GroupUser) -> Result<Empty, Status> {
        let group = group_id(request.group_id)?;
        let user = validate::user_id("user_id", request.user_id)?;
        if user == me {
            return Err(Status::invalid_argument("use Leave to leave a group"));
        }
        let role = self.manager(group, me, "kick members").await?;
        let Some(target) = self.sql().member(group, user).await? else {
            return Ok(Empty {});
        };
        // The owner kicks anyone else; an admin only plain members.
        let up_to = if role == GroupRole::Owner {
            GroupRole::Admin
        } else {
            GroupRole::Member
        };
        let denied =
            || Status::permission_denied("admins may kick only members; the owner may kick admins");
        if role_of(target.role) > up_to {
            return Err(denied());
        }
        // The store checks the role again as it deletes: a promotion in between wins.
        let removed = self.sql().remove_member(group, user, up_to).await?;
        if !removed && self.sql().member(group, user).await?.is_some() {
            return Err(denied());
        }
        self.forget(group).await;
        info!(group, user, by = me, "member kicked");
        Ok(Empty {})
    }
}

//! [`Groups`]: the `GroupService` handler, and the checks every rpc shares.

use std::sync::Arc;

use im_common::bus::{Bus, keys};
use im_common::identity;
use im_common::proto::{
    CreateGroupRequest, Empty, GroupId, GroupInfo, GroupJoinRequests, GroupRole, GroupService,
    GroupUser, GroupUsers, Groups as GroupList, JoinPolicy, JoinReply, JoinRequest, Members,
    MembersRequest, MuteAllRequest, MuteRequest, RespondJoinRequest, SetRoleRequest,
    UpdateGroupRequest, UserIds,
};
use im_common::store::Sql;
use im_common::store::groups::GroupStore;
use im_common::validate;
use mprpc::{Context, Status};
use tracing::warn;

use crate::Settings;

/// The group service.
///
/// Cloning is cheap: clones share the database pool, the bus and the settings.
#[derive(Clone)]
pub struct Groups {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) sql: Sql,
    pub(crate) bus: Bus,
    pub(crate) settings: Settings,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Groups {
    /// A handler on `sql` (groups, members, the group conversations) and `bus` (the cache of
    /// member lists it invalidates).
    pub fn new(sql: Sql, bus: Bus, settings: Settings) -> Groups {
        Groups {
            inner: Arc::new(Inner { sql, bus, settings }),
        }
    }

    pub(crate) fn sql(&self) -> &Sql {
        &self.inner.sql
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// `user`'s role in live group `group`, read from the primary.
    ///
    /// # Errors
    /// `NOT_FOUND` for a missing or dismissed group, `PERMISSION_DENIED` for a non-member.
    pub(crate) async fn role_in(&self, group: u64, user: u64) -> Result<GroupRole, Status> {
        match self.sql().member(group, user).await? {
            Some(member) => Ok(role_of(member.role)),
            None => {
                self.live_group(group).await?;
                Err(Status::permission_denied(
                    "you are not a member of this group",
                ))
            }
        }
    }

    /// A live group, read from the primary; `NOT_FOUND` otherwise.
    pub(crate) async fn live_group(&self, group: u64) -> Result<GroupInfo, Status> {
        self.sql()
            .group(group)
            .await?
            .ok_or_else(|| Status::not_found("group not found"))
    }

    /// `user`'s role, which must be owner or admin to `action`.
    pub(crate) async fn manager(
        &self,
        group: u64,
        user: u64,
        action: &str,
    ) -> Result<GroupRole, Status> {
        let role = self.role_in(group, user).await?;
        if role < GroupRole::Admin {
            return Err(Status::permission_denied(format!(
                "only the group's owner and admins may {action}"
            )));
        }
        Ok(role)
    }

    /// Forgets the group's cached member list after a write; a failing cache is logged
    /// (the entry then expires by itself).
    pub(crate) async fn forget(&self, group: u64) {
        if let Err(err) = self
            .inner
            .bus
            .cache
            .delete(vec![keys::members(group)])
            .await
        {
            metrics::counter!("mpim_group_cache_failures_total").increment(1);
            warn!(cause = %err, group, "cached member list not deleted");
        }
    }
}

/// A stored role; anything unknown counts as the least.
pub(crate) fn role_of(role: i32) -> GroupRole {
    GroupRole::try_from(role).unwrap_or(GroupRole::Member)
}

/// A join policy from a request.
pub(crate) fn join_policy(value: i32) -> Result<JoinPolicy, Status> {
    JoinPolicy::try_from(value)
        .map_err(|_| Status::invalid_argument("join_policy must be OPEN or APPROVAL"))
}

/// The group id of a request: nonzero.
pub(crate) fn group_id(value: u64) -> Result<u64, Status> {
    validate::user_id("group_id", value)
}

/// The caller, from the call's identity.
pub(crate) fn caller(ctx: &Context) -> Result<u64, Status> {
    Ok(identity::user(ctx)?.id)
}

impl GroupService for Groups {
    async fn create(&self, ctx: Context, request: CreateGroupRequest) -> Result<GroupInfo, Status> {
        self.create_group(caller(&ctx)?, request).await
    }

    async fn invite(&self, ctx: Context, request: GroupUsers) -> Result<UserIds, Status> {
        self.invite_users(caller(&ctx)?, request).await
    }

    async fn join(&self, ctx: Context, request: JoinRequest) -> Result<JoinReply, Status> {
        self.join_group(caller(&ctx)?, request).await
    }

    async fn list_join_requests(
        &self,
        ctx: Context,
        request: GroupId,
    ) -> Result<GroupJoinRequests, Status> {
        self.pending_requests(caller(&ctx)?, request).await
    }

    async fn respond_join(
        &self,
        ctx: Context,
        request: RespondJoinRequest,
    ) -> Result<Empty, Status> {
        self.settle_request(caller(&ctx)?, request).await
    }

    async fn leave(&self, ctx: Context, request: GroupId) -> Result<Empty, Status> {
        self.leave_group(caller(&ctx)?, request).await
    }

    async fn kick(&self, ctx: Context, request: GroupUser) -> Result<Empty, Status> {
        self.kick_member(caller(&ctx)?, request).await
    }

    async fn set_role(&self, ctx: Context, request: SetRoleRequest) -> Result<Empty, Status> {
        self.change_role(caller(&ctx)?, request).await
    }

    async fn mute(&self, ctx: Context, request: MuteRequest) -> Result<Empty, Status> {
        let me = caller(&ctx)?;
        if request.until_ms <= im_common::ids::now_ms() {
            return Err(Status::invalid_argument(
                "until_ms must be in the future (Unmute lifts a mute)",
            ));
        }
        self.set_mute(me, request.group_id, request.user_id, request.until_ms)
            .await
    }

    async fn unmute(&self, ctx: Context, request: GroupUser) -> Result<Empty, Status> {
        self.set_mute(caller(&ctx)?, request.group_id, request.user_id, 0)
            .await
    }

    async fn mute_all(&self, ctx: Context, request: MuteAllRequest) -> Result<Empty, Status> {
        self.set_mute_all(caller(&ctx)?, request).await
    }

    async fn members(&self, ctx: Context, request: MembersRequest) -> Result<Members, Status> {
        self.member_page(caller(&ctx)?, request).await
    }

    async fn my_groups(&self, ctx: Context, _request: Empty) -> Result<GroupList, Status> {
        self.groups_of(caller(&ctx)?).await
    }

    async fn info(&self, ctx: Context, request: GroupId) -> Result<GroupInfo, Status> {
        self.group_info(caller(&ctx)?, request).await
    }

    async fn update_info(
        &self,
        ctx: Context,
        request: UpdateGroupRequest,
    ) -> Result<GroupInfo, Status> {
        self.update_group(caller(&ctx)?, request).await
    }

    async fn dismiss(&self, ctx: Context, request: GroupId) -> Result<Empty, Status> {
        self.dismiss_group(caller(&ctx)?, request).await
    }
}

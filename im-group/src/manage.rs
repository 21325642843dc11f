//! Roles, mutes and the group's own information: SetRole, Mute, Unmute, MuteAll,
//! UpdateInfo, Dismiss.

use im_common::proto::{
    Empty, GroupId, GroupInfo, GroupRole, MuteAllRequest, SetRoleRequest, UpdateGroupRequest,
};
use im_common::store::groups::{GroupStore, GroupUpdate};
use im_common::validate::{self, MAX_NAME_BYTES, MAX_TEXT_BYTES};
use mprpc::Status;
use tracing::info;

use crate::handler::{Groups, group_id, join_policy, role_of};

impl Groups {
    pub(crate) async fn change_role(
        &self,
        me: u64,
        request: SetRoleRequest,
    ) -> Result<Empty, Status> {
        let group = group_id(request.group_id)?;
        let user = validate::user_id("user_id", request.user_id)?;
        let role = match GroupRole::try_from(request.role) {
            Ok(role @ (GroupRole::Member | GroupRole::Admin | GroupRole::Owner)) => role,
            _ => {
                return Err(Status::invalid_argument(
                    "role must be MEMBER, ADMIN or OWNER",
                ));
            }
        };
        if self.role_in(group, me).await? != GroupRole::Owner {
            return Err(Status::permission_denied(
                "only the group's owner sets roles",
            ));
        }
        if user == me {
            return Err(Status::invalid_argument(
                "the owner's role changes only by making another member the OWNER",
            ));
        }
        if role == GroupRole::Owner {
            self.sql().transfer_ownership(group, me, user).await?;
            info!(group, from = me, to = user, "ownership transferred");
        } else {
            self.sql().set_role(group, user, role).await?;
        }
        self.forget(group).await;
        Ok(Empty {})
    }

    /// Mutes `user` until `until_ms`, or unmutes them with 0: the owner over admins and
    /// members, an admin over members.
    pub(crate) async fn set_mute(
        &self,
        me: u64,
        group: u64,
        user: u64,
        until_ms: i64,
    ) -> Result<Empty, Status> {
        let group = group_id(group)?;
        let user = validate::user_id("user_id", user)?;
        let role = self.manager(group, me, "mute members").await?;
        let up_to = if role == GroupRole::Owner {
            GroupRole::Admin
        } else {
            GroupRole::Member
        };
        let denied =
            || Status::permission_denied("you may mute and unmute only members below your role");
        let target = self
            .sql()
            .member(group, user)
            .await?
            .ok_or_else(|| Status::not_found("that user is not a member of this group"))?;
        if role_of(target.role) > up_to {
            return Err(denied());
        }
        if !self.sql().mute(group, user, until_ms, up_to).await? {
            // Promoted or gone since the check above.
            return Err(match self.sql().member(group, user).await? {
                Some(_) => denied(),
                None => Status::not_found("that user is not a member of this group"),
            });
        }
        self.forget(group).await;
        Ok(Empty {})
    }

    pub(crate) async fn set_mute_all(
        &self,
        me: u64,
        request: MuteAllRequest,
    ) -> Result<Empty, Status> {
        let group = group_id(request.group_id)?;
        self.manager(group, me, "mute the group").await?;
        if !self.sql().set_mute_all(group, request.muted).await? {
            return Err(Status::not_found("group not found"));
        }
        self.forget(group).await;
        Ok(Empty {})
    }

    pub(crate) async fn update_group(
        &self,
        me: u64,
        request: UpdateGroupRequest,
    ) -> Result<GroupInfo, Status> {
        let group = group_id(request.group_id)?;
        if let Some(name) = &request.name {
            validate::non_empty_text("name", name, MAX_NAME_BYTES)?;
        }
        if let Some(description) = &request.description {
            validate::text("description", description, MAX_TEXT_BYTES)?;
        }
        let policy = request.join_policy.map(join_policy).transpose()?;
        self.manager(group, me, "change the group's information")
            .await?;
        let update = GroupUpdate {
            name: request.name,
            description: request.description,
            join_policy: policy,
        };
        let info = self
            .sql()
            .update_group(group, &update)
            .await?
            .ok_or_else(|| Status::not_found("group not found"))?;
        self.forget(group).await;
        Ok(info)
    }

    pub(crate) async fn dismiss_group(&self, me: u64, request: GroupId) -> Result<Empty, Status> {
        let group = group_id(request.group_id)?;
        if self.role_in(group, me).await? != GroupRole::Owner {
            return Err(Status::permission_denied(
                "only the group's owner may dismiss it",
            ));
        }
        if !self.sql().dismiss(group).await? {
            return Err(Status::not_found("group not found"));
        }
        self.forget(group).await;
        info!(group, owner = me, "group dismissed");
        Ok(Empty {})
    }
}

//! Groups: [`Client`] methods over the group commands.

use im_proto::client::request::Command;
use im_proto::*;

use crate::{Client, Error};

impl Client {
    /// Creates a group owned by this user, with these members.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn create_group(&self, name: &str, member_ids: Vec<u64>) -> Result<GroupInfo, Error> {
        let request = CreateGroupRequest {
            name: name.into(),
            member_ids,
            ..CreateGroupRequest::default()
        };
        expect!(self.call(Command::CreateGroup(request)).await, Group)
    }

    /// Adds users to a group; returns those added.
    ///
    /// # Errors
    /// As [`Client::call`]; `PERMISSION_DENIED` when not allowed to invite.
    pub async fn invite(&self, group_id: u64, user_ids: Vec<u64>) -> Result<Vec<u64>, Error> {
        let request = GroupUsers { group_id, user_ids };
        expect!(self.call(Command::Invite(request)).await, UserIds).map(|ids| ids.user_ids)
    }

    /// Joins a group; `false` when the join waits for approval.
    ///
    /// # Errors
    /// As [`Client::call`]; `NOT_FOUND` for no such group.
    pub async fn join_group(&self, group_id: u64, message: &str) -> Result<bool, Error> {
        let request = JoinRequest {
            group_id,
            message: message.into(),
        };
        expect!(self.call(Command::JoinGroup(request)).await, Joined).map(|j| j.joined)
    }

    /// Join requests waiting for approval (owners and admins).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn list_join_requests(&self, group_id: u64) -> Result<GroupJoinRequests, Error> {
        expect!(
            self.call(Command::ListJoinRequests(GroupId { group_id }))
                .await,
            JoinRequests
        )
    }

    /// Approves or refuses a join request.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn respond_join(&self, request: RespondJoinRequest) -> Result<(), Error> {
        expect!(self.call(Command::RespondJoin(request)).await, Ok).map(drop)
    }

    /// Leaves a group.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn leave_group(&self, group_id: u64) -> Result<(), Error> {
        expect!(
            self.call(Command::LeaveGroup(GroupId { group_id })).await,
            Ok
        )
        .map(drop)
    }

    /// Removes a member (owners and admins).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn kick(&self, group_id: u64, user_id: u64) -> Result<(), Error> {
        let request = GroupUser { group_id, user_id };
        expect!(self.call(Command::Kick(request)).await, Ok).map(drop)
    }

    /// Changes a member's role (OWNER transfers ownership).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn set_role(&self, request: SetRoleRequest) -> Result<(), Error> {
        expect!(self.call(Command::SetRole(request)).await, Ok).map(drop)
    }

    /// Mutes a member until a time.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn mute(&self, request: MuteRequest) -> Result<(), Error> {
        expect!(self.call(Command::Mute(request)).await, Ok).map(drop)
    }

    /// Lifts a member's mute.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn unmute(&self, group_id: u64, user_id: u64) -> Result<(), Error> {
        let request = GroupUser { group_id, user_id };
        expect!(self.call(Command::Unmute(request)).await, Ok).map(drop)
    }

    /// Mutes or unmutes every member but owners and admins.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn mute_all(&self, group_id: u64, muted: bool) -> Result<(), Error> {
        let request = MuteAllRequest { group_id, muted };
        expect!(self.call(Command::MuteAll(request)).await, Ok).map(drop)
    }

    /// One page of members, with user ids above `after_user_id`.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn members(
        &self,
        group_id: u64,
        after_user_id: u64,
        limit: u32,
    ) -> Result<Members, Error> {
        let request = MembersRequest {
            group_id,
            after_user_id,
            limit,
        };
        expect!(self.call(Command::Members(request)).await, Members)
    }

    /// The groups this user is a member of.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn my_groups(&self) -> Result<Groups, Error> {
        expect!(self.call(Command::MyGroups(Empty {})).await, Groups)
    }

    /// One group's information.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn group_info(&self, group_id: u64) -> Result<GroupInfo, Error> {
        expect!(
            self.call(Command::GroupInfo(GroupId { group_id })).await,
            Group
        )
    }

    /// Changes a group's name, description or join policy.
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn update_group(&self, request: UpdateGroupRequest) -> Result<GroupInfo, Error> {
        expect!(self.call(Command::UpdateGroup(request)).await, Group)
    }

    /// Ends a group (its owner).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn dismiss_group(&self, group_id: u64) -> Result<(), Error> {
        expect!(
            self.call(Command::DismissGroup(GroupId { group_id })).await,
            Ok
        )
        .map(drop)
    }
}

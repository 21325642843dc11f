//! Reads: Members, MyGroups, Info. Membership is checked on the primary; the lists and
//! information come from the reader (the replica, when configured), which may lag.

use im_common::proto::{
    GroupId, GroupInfo, Groups as GroupList, JoinPolicy, Members, MembersRequest,
};
use im_common::store::groups::GroupStore;
use im_common::validate;
use mprpc::Status;

use crate::handler::{Groups, group_id};

/// Members per page unless the request says otherwise.
const DEFAULT_PAGE: u32 = 100;
/// Most members per page.
const MAX_PAGE: u32 = 1000;

impl Groups {
    pub(crate) async fn member_page(
        &self,
        me: u64,
        request: MembersRequest,
    ) -> Result<Members, Status> {
        let group = group_id(request.group_id)?;
        let limit = validate::limit(request.limit, DEFAULT_PAGE, MAX_PAGE)?;
        self.role_in(group, me).await?;
        let (members, has_more) = self
            .sql()
            .members(group, request.after_user_id, limit)
            .await?;
        Ok(Members { members, has_more })
    }

    pub(crate) async fn groups_of(&self, me: u64) -> Result<GroupList, Status> {
        Ok(GroupList {
            groups: self.sql().groups_of(me).await?,
        })
    }

    /// A group's information: for its members, and for anyone when it is OPEN.
    pub(crate) async fn group_info(&self, me: u64, request: GroupId) -> Result<GroupInfo, Status> {
        let group = group_id(request.group_id)?;
        let info = self
            .sql()
            .group_from_replica(group)
            .await?
            .ok_or_else(|| Status::not_found("group not found"))?;
        if info.join_policy != JoinPolicy::Open as i32 {
            self.role_in(group, me).await?;
        }
        Ok(info)
    }
}

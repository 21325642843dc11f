//! The role matrix on SQLite and MariaDB: what the owner, an admin, a member and a
//! non-member may do with kick, mute, set role, update, mute-all and dismiss; ownership
//! transfer.

mod support;

use im_common::on_both;

use im_common::proto::{
    Empty, GroupId, GroupRole, GroupServiceClient, GroupUser, JoinPolicy, MembersRequest,
    MuteAllRequest, MuteRequest, SetRoleRequest, UpdateGroupRequest,
};
use im_common::store::Sql;
use mprpc::Code;
use support::*;

on_both!(kicking_follows_roles);
on_both!(muting_follows_roles);
on_both!(only_the_owner_sets_roles);
on_both!(owner_and_admins_update_and_mute_all);
on_both!(only_the_owner_dismisses);
on_both!(ownership_is_transferred);

/// A group with an owner, two admins, two members, and a user outside it.
struct Cast {
    client: GroupServiceClient,
    _server: mprpc::Server,
    group: u64,
    owner: u64,
    admin: u64,
    admin2: u64,
    member: u64,
    member2: u64,
    outsider: u64,
}

impl Cast {
    async fn new(sql: &Sql) -> Cast {
        let ids = add_users(sql, "cast", 6).await;
        let (server, client) = default_service(sql);
        let (owner, admin, admin2, member, member2, outsider) =
            (ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]);
        let group = client
            .create_with(
                &create(
                    "cast",
                    JoinPolicy::Approval,
                    &[admin, admin2, member, member2],
                ),
                &as_user(owner),
            )
            .await
            .unwrap()
            .group_id;
        let cast = Cast {
            client,
            _server: server,
            group,
            owner,
            admin,
            admin2,
            member,
            member2,
            outsider,
        };
        for user in [admin, admin2] {
            cast.set_role(owner, user, GroupRole::Admin).await.unwrap();
        }
        cast
    }

    fn target(&self, user: u64) -> GroupUser {
        GroupUser {
            group_id: self.group,
            user_id: user,
        }
    }

    async fn kick(&self, by: u64, user: u64) -> Result<Empty, mprpc::Error> {
        self.client
            .kick_with(&self.target(user), &as_user(by))
            .await
    }

    async fn mute(&self, by: u64, user: u64, until_ms: i64) -> Result<Empty, mprpc::Error> {
        let request = MuteRequest {
            group_id: self.group,
            user_id: user,
            until_ms,
        };
        self.client.mute_with(&request, &as_user(by)).await
    }

    async fn set_role(&self, by: u64, user: u64, role: GroupRole) -> Result<Empty, mprpc::Error> {
        let request = SetRoleRequest {
            group_id: self.group,
            user_id: user,
            role: role as i32,
        };
        self.client.set_role_with(&request, &as_user(by)).await
    }

    /// Every member's (role, muted until), read as the first owner.
    async fn roster(&self) -> Vec<(u64, GroupRole, i64)> {
        self.roster_as(self.owner).await
    }

    /// Every member's (role, muted until), read as `by`.
    async fn roster_as(&self, by: u64) -> Vec<(u64, GroupRole, i64)> {
        let request = MembersRequest {
            group_id: self.group,
            after_user_id: 0,
            limit: 0,
        };
        let page = self
            .client
            .members_with(&request, &as_user(by))
            .await
            .unwrap();
        page.members
            .iter()
            .map(|m| {
                (
                    m.user_id,
                    GroupRole::try_from(m.role).unwrap(),
                    m.muted_until_ms,
                )
            })
            .collect()
    }

    async fn role(&self, user: u64) -> Option<GroupRole> {
        let roster = self.roster().await;
        roster.iter().find(|m| m.0 == user).map(|m| m.1)
    }

    fn id(&self) -> GroupId {
        GroupId {
            group_id: self.group,
        }
    }
}

fn future() -> i64 {
    im_common::ids::now_ms() + 3_600_000
}

async fn kicking_follows_roles(sql: Sql) {
    let c = Cast::new(&sql).await;
    // Refused, and nobody leaves.
    for (by, user) in [
        (c.outsider, c.member),
        (c.member, c.member2),
        (c.admin, c.owner),
        (c.admin, c.admin2),
    ] {
        assert_eq!(
            code(c.kick(by, user).await),
            Code::PermissionDenied,
            "{by} kicking {user}"
        );
    }
    assert_eq!(c.roster().await.len(), 5);
    assert_eq!(code(c.kick(c.owner, c.owner).await), Code::InvalidArgument);
    assert_eq!(code(c.kick(c.admin, 0).await), Code::InvalidArgument);

    c.kick(c.admin, c.member2).await.unwrap();
    assert_eq!(c.role(c.member2).await, None);
    c.kick(c.owner, c.admin2).await.unwrap();
    assert_eq!(c.role(c.admin2).await, None);
    // Kicking someone who is not a member changes nothing and succeeds.
    c.kick(c.owner, c.admin2).await.unwrap();
    c.kick(c.owner, c.outsider).await.unwrap();
    // A kicked member no longer acts in the group.
    assert_eq!(
        code(c.kick(c.admin2, c.member).await),
        Code::PermissionDenied
    );
    let mut left: Vec<u64> = c.roster().await.iter().map(|m| m.0).collect();
    left.sort_unstable();
    let mut expected = vec![c.owner, c.admin, c.member];
    expected.sort_unstable();
    assert_eq!(left, expected);
    let missing = GroupUser {
        group_id: c.group + 1000,
        user_id: c.member,
    };
    assert_eq!(
        code(c.client.kick_with(&missing, &as_user(c.owner)).await),
        Code::NotFound
    );
}

async fn muting_follows_roles(sql: Sql) {
    let c = Cast::new(&sql).await;
    let until = future();
    for (by, user) in [
        (c.outsider, c.member),
        (c.member, c.member2),
        (c.member, c.member),
        (c.admin, c.owner),
        (c.admin, c.admin2),
        (c.admin, c.admin),
        (c.owner, c.owner),
    ] {
        assert_eq!(
            code(c.mute(by, user, until).await),
            Code::PermissionDenied,
            "{by} muting {user}"
        );
    }
    assert!(c.roster().await.iter().all(|m| m.2 == 0), "nobody muted");
    let (code_, message) = failure(c.mute(c.admin, c.member, 1).await);
    assert_eq!(code_, Code::InvalidArgument);
    assert!(message.contains("until_ms"), "{message}");
    assert_eq!(
        code(c.mute(c.admin, c.outsider, until).await),
        Code::NotFound
    );

    c.mute(c.admin, c.member, until).await.unwrap();
    c.mute(c.owner, c.admin2, until).await.unwrap();
    let muted =
        |roster: &[(u64, GroupRole, i64)], user| roster.iter().find(|m| m.0 == user).unwrap().2;
    let roster = c.roster().await;
    assert_eq!(muted(&roster, c.member), until);
    assert_eq!(muted(&roster, c.admin2), until);
    assert_eq!(muted(&roster, c.member2), 0);

    // Unmute follows the same rules.
    let unmute = |by, user| {
        let request = c.target(user);
        let client = c.client.clone();
        async move { client.unmute_with(&request, &as_user(by)).await }
    };
    assert_eq!(
        code(unmute(c.member2, c.member).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(unmute(c.admin, c.admin2).await),
        Code::PermissionDenied
    );
    unmute(c.admin, c.member).await.unwrap();
    unmute(c.owner, c.admin2).await.unwrap();
    assert!(c.roster().await.iter().all(|m| m.2 == 0), "all unmuted");
}

async fn only_the_owner_sets_roles(sql: Sql) {
    let c = Cast::new(&sql).await;
    for by in [c.admin, c.member, c.outsider] {
        assert_eq!(
            code(c.set_role(by, c.member, GroupRole::Admin).await),
            Code::PermissionDenied
        );
        assert_eq!(
            code(c.set_role(by, by, GroupRole::Owner).await),
            Code::PermissionDenied,
            "{by} making themselves owner"
        );
    }
    assert_eq!(c.role(c.member).await, Some(GroupRole::Member));
    assert_eq!(
        code(c.set_role(c.owner, c.owner, GroupRole::Member).await),
        Code::InvalidArgument
    );
    let unspecified = SetRoleRequest {
        group_id: c.group,
        user_id: c.member,
        role: GroupRole::Unspecified as i32,
    };
    assert_eq!(
        code(
            c.client
                .set_role_with(&unspecified, &as_user(c.owner))
                .await
        ),
        Code::InvalidArgument
    );
    let unknown = SetRoleRequest {
        role: 9,
        ..unspecified
    };
    assert_eq!(
        code(c.client.set_role_with(&unknown, &as_user(c.owner)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(c.set_role(c.owner, c.outsider, GroupRole::Admin).await),
        Code::NotFound
    );
    c.set_role(c.owner, c.member, GroupRole::Admin)
        .await
        .unwrap();
    assert_eq!(c.role(c.member).await, Some(GroupRole::Admin));
    c.set_role(c.owner, c.admin, GroupRole::Member)
        .await
        .unwrap();
    assert_eq!(c.role(c.admin).await, Some(GroupRole::Member));
    // The demoted admin lost their powers; the promoted member has them.
    assert_eq!(
        code(c.kick(c.admin, c.member2).await),
        Code::PermissionDenied
    );
    c.kick(c.member, c.member2).await.unwrap();
}

async fn owner_and_admins_update_and_mute_all(sql: Sql) {
    let c = Cast::new(&sql).await;
    let update = |name: &str| UpdateGroupRequest {
        group_id: c.group,
        name: Some(name.to_owned()),
        description: None,
        join_policy: None,
    };
    for by in [c.member, c.outsider] {
        assert_eq!(
            code(c.client.update_info_with(&update("no"), &as_user(by)).await),
            Code::PermissionDenied
        );
        let mute_all = MuteAllRequest {
            group_id: c.group,
            muted: true,
        };
        assert_eq!(
            code(c.client.mute_all_with(&mute_all, &as_user(by)).await),
            Code::PermissionDenied
        );
    }
    let info = c
        .client
        .update_info_with(&update("by admin"), &as_user(c.admin))
        .await
        .unwrap();
    assert_eq!(info.name, "by admin");
    assert_eq!(info.join_policy, JoinPolicy::Approval as i32);
    let full = UpdateGroupRequest {
        group_id: c.group,
        name: Some("by owner".into()),
        description: Some("d".repeat(4096)),
        join_policy: Some(JoinPolicy::Open as i32),
    };
    let info = c
        .client
        .update_info_with(&full, &as_user(c.owner))
        .await
        .unwrap();
    assert_eq!(
        (info.name.as_str(), info.description.len(), info.join_policy),
        ("by owner", 4096, JoinPolicy::Open as i32)
    );
    for bad in [
        update(""),
        update("   "),
        update(&"n".repeat(129)),
        UpdateGroupRequest {
            description: Some("d".repeat(4097)),
            ..update("ok")
        },
        UpdateGroupRequest {
            join_policy: Some(5),
            ..update("ok")
        },
    ] {
        assert_eq!(
            code(c.client.update_info_with(&bad, &as_user(c.owner)).await),
            Code::InvalidArgument,
            "{bad:?}"
        );
    }
    let info = c
        .client
        .info_with(&c.id(), &as_user(c.member))
        .await
        .unwrap();
    assert_eq!(info.name, "by owner", "refused updates changed nothing");

    for (by, muted) in [(c.admin, true), (c.owner, false), (c.owner, true)] {
        let request = MuteAllRequest {
            group_id: c.group,
            muted,
        };
        c.client
            .mute_all_with(&request, &as_user(by))
            .await
            .unwrap();
        let info = c
            .client
            .info_with(&c.id(), &as_user(c.member))
            .await
            .unwrap();
        assert_eq!(info.mute_all, muted);
    }
}

async fn only_the_owner_dismisses(sql: Sql) {
    let c = Cast::new(&sql).await;
    for by in [c.admin, c.member, c.outsider] {
        assert_eq!(
            code(c.client.dismiss_with(&c.id(), &as_user(by)).await),
            Code::PermissionDenied
        );
    }
    c.client
        .info_with(&c.id(), &as_user(c.member))
        .await
        .unwrap();
    c.client
        .dismiss_with(&c.id(), &as_user(c.owner))
        .await
        .unwrap();
    // Gone for everyone, for every rpc.
    for by in [c.owner, c.admin, c.member, c.outsider] {
        let as_by = as_user(by);
        assert_eq!(
            code(c.client.info_with(&c.id(), &as_by).await),
            Code::NotFound
        );
        assert_eq!(
            code(c.client.dismiss_with(&c.id(), &as_by).await),
            Code::NotFound
        );
        assert_eq!(
            code(c.client.leave_with(&c.id(), &as_by).await),
            Code::NotFound
        );
        let page = MembersRequest {
            group_id: c.group,
            after_user_id: 0,
            limit: 10,
        };
        assert_eq!(
            code(c.client.members_with(&page, &as_by).await),
            Code::NotFound
        );
        assert_eq!(code(c.kick(by, c.member2).await), Code::NotFound);
        let join = im_common::proto::JoinRequest {
            group_id: c.group,
            message: String::new(),
        };
        assert_eq!(
            code(c.client.join_with(&join, &as_by).await),
            Code::NotFound
        );
        let mine = c.client.my_groups_with(&Empty {}, &as_by).await.unwrap();
        assert!(mine.groups.is_empty());
    }
}

async fn ownership_is_transferred(sql: Sql) {
    let c = Cast::new(&sql).await;
    let (code_, message) = failure(c.client.leave_with(&c.id(), &as_user(c.owner)).await);
    assert_eq!(code_, Code::FailedPrecondition);
    assert!(message.contains("transfer ownership"), "{message}");

    c.set_role(c.owner, c.member, GroupRole::Owner)
        .await
        .unwrap();
    let info = c
        .client
        .info_with(&c.id(), &as_user(c.admin))
        .await
        .unwrap();
    assert_eq!(info.owner_id, c.member);
    assert_eq!(c.role(c.member).await, Some(GroupRole::Owner));
    assert_eq!(c.role(c.owner).await, Some(GroupRole::Admin));
    // The old owner is an admin now: no more owner's rights.
    assert_eq!(
        code(c.set_role(c.owner, c.member2, GroupRole::Admin).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(c.client.dismiss_with(&c.id(), &as_user(c.owner)).await),
        Code::PermissionDenied
    );
    assert_eq!(code(c.kick(c.owner, c.admin).await), Code::PermissionDenied);
    c.client
        .leave_with(&c.id(), &as_user(c.owner))
        .await
        .unwrap();
    let roster = c.roster_as(c.member).await;
    assert_eq!(roster.len(), 4);
    assert!(roster.iter().all(|m| m.0 != c.owner));

    // The new owner empties the group, then leaves it as the last member: dismissed.
    let new_owner = c.member;
    for user in [c.admin, c.admin2, c.member2] {
        c.kick(new_owner, user).await.unwrap();
    }
    c.client
        .leave_with(&c.id(), &as_user(new_owner))
        .await
        .unwrap();
    assert_eq!(
        code(c.client.info_with(&c.id(), &as_user(new_owner)).await),
        Code::NotFound
    );
}

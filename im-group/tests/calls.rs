//! Identity and the cache, on SQLite and MariaDB: calls without an identity are refused,
//! ids in a request body never act as the caller, writes delete the cached member list and
//! a failing cache never fails a call.

mod support;

use im_common::on_both;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use im_common::bus::testing::DownCache;
use im_common::bus::{Bus, keys};
use im_common::identity::{self, User};
use im_common::proto::{
    CreateGroupRequest, Empty, GroupId, GroupRole, GroupService, GroupServiceClient, GroupUser,
    GroupUsers, JoinPolicy, JoinRequest, MembersRequest, MuteAllRequest, MuteRequest,
    RespondJoinRequest, SetRoleRequest, UpdateGroupRequest,
};
use im_common::store::Sql;
use im_group::{Groups, Settings};
use mprpc::{CallOptions, Code, Text};
use support::*;

on_both!(calls_without_a_user_are_refused);
on_both!(ids_in_the_body_never_act_as_the_caller);
on_both!(the_handler_takes_its_caller_from_the_context);
on_both!(writes_delete_the_cached_member_list);
on_both!(a_failing_cache_fails_no_call);

/// Every rpc once, with `options`; the codes in rpc order.
async fn every_rpc(client: &GroupServiceClient, group: u64, options: &CallOptions) -> Vec<Code> {
    let id = GroupId { group_id: group };
    let user = GroupUser {
        group_id: group,
        user_id: 1,
    };
    let codes = vec![
        code(
            client
                .create_with(&create("x", JoinPolicy::Open, &[]), options)
                .await,
        ),
        code(
            client
                .invite_with(
                    &GroupUsers {
                        group_id: group,
                        user_ids: vec![1],
                    },
                    options,
                )
                .await,
        ),
        code(
            client
                .join_with(
                    &JoinRequest {
                        group_id: group,
                        message: String::new(),
                    },
                    options,
                )
                .await,
        ),
        code(client.list_join_requests_with(&id, options).await),
        code(
            client
                .respond_join_with(
                    &RespondJoinRequest {
                        group_id: group,
                        user_id: 1,
                        accept: true,
                    },
                    options,
                )
                .await,
        ),
        code(client.leave_with(&id, options).await),
        code(client.kick_with(&user, options).await),
        code(
            client
                .set_role_with(
                    &SetRoleRequest {
                        group_id: group,
                        user_id: 1,
                        role: 3,
                    },
                    options,
                )
                .await,
        ),
        code(
            client
                .mute_with(
                    &MuteRequest {
                        group_id: group,
                        user_id: 1,
                        until_ms: i64::MAX,
                    },
                    options,
                )
                .await,
        ),
        code(client.unmute_with(&user, options).await),
        code(
            client
                .mute_all_with(
                    &MuteAllRequest {
                        group_id: group,
                        muted: true,
                    },
                    options,
                )
                .await,
        ),
        code(
            client
                .members_with(
                    &MembersRequest {
                        group_id: group,
                        after_user_id: 0,
                        limit: 0,
                    },
                    options,
                )
                .await,
        ),
        code(client.my_groups_with(&Empty {}, options).await),
        code(client.info_with(&id, options).await),
        code(
            client
                .update_info_with(
                    &UpdateGroupRequest {
                        group_id: group,
                        name: Some("y".into()),
                        description: None,
                        join_policy: None,
                    },
                    options,
                )
                .await,
        ),
        code(client.dismiss_with(&id, options).await),
    ];
    assert_eq!(codes.len(), 16, "one per rpc of GroupService");
    codes
}

async fn calls_without_a_user_are_refused(sql: Sql) {
    let owner = add_user(&sql, "owner").await;
    let (server, client) = default_service(&sql);
    let group = client
        .create_with(&create("g", JoinPolicy::Open, &[]), &as_user(owner))
        .await
        .unwrap()
        .group_id;
    // A gateway call that names no user, or names one that is no user id.
    for options in [
        CallOptions::new(),
        CallOptions::new().metadata(Text::from_static(identity::USER), "0"),
        CallOptions::new().metadata(Text::from_static(identity::USER), "1 OR 1=1"),
        CallOptions::new().metadata(Text::from_static(identity::USER), "-5"),
    ] {
        let codes = every_rpc(&client, group, &options).await;
        assert!(
            codes.iter().all(|c| *c == Code::Unauthenticated),
            "{codes:?}"
        );
    }
    // A caller that does not say which process it is, even with a user.
    let anonymous = GroupServiceClient::new(mprpc::Client::builder().in_process(&server));
    let codes = every_rpc(&anonymous, group, &as_user(owner)).await;
    assert!(
        codes.iter().all(|c| *c == Code::Unauthenticated),
        "{codes:?}"
    );
    // Nothing happened to the group.
    let info = client
        .info_with(&GroupId { group_id: group }, &as_user(owner))
        .await
        .unwrap();
    assert_eq!(
        (info.name.as_str(), info.member_count, info.mute_all),
        ("g", 1, false)
    );
}

async fn ids_in_the_body_never_act_as_the_caller(sql: Sql) {
    let ids = add_users(&sql, "f", 3).await;
    let (owner, member, outsider) = (ids[0], ids[1], ids[2]);
    let (_server, client) = default_service(&sql);
    let group = client
        .create_with(
            &create("g", JoinPolicy::Approval, &[member]),
            &as_user(owner),
        )
        .await
        .unwrap()
        .group_id;
    let by_outsider = as_user(outsider);
    // The outsider names themselves, or the owner, as the user in the body.
    let own_role = SetRoleRequest {
        group_id: group,
        user_id: outsider,
        role: GroupRole::Owner as i32,
    };
    assert_eq!(
        code(client.set_role_with(&own_role, &by_outsider).await),
        Code::PermissionDenied
    );
    let self_invite = GroupUsers {
        group_id: group,
        user_ids: vec![outsider],
    };
    assert_eq!(
        code(client.invite_with(&self_invite, &by_outsider).await),
        Code::PermissionDenied
    );
    client
        .join_with(
            &JoinRequest {
                group_id: group,
                message: "me".into(),
            },
            &by_outsider,
        )
        .await
        .unwrap();
    let self_accept = RespondJoinRequest {
        group_id: group,
        user_id: outsider,
        accept: true,
    };
    assert_eq!(
        code(client.respond_join_with(&self_accept, &by_outsider).await),
        Code::PermissionDenied
    );
    let kick_owner = GroupUser {
        group_id: group,
        user_id: owner,
    };
    assert_eq!(
        code(client.kick_with(&kick_owner, &by_outsider).await),
        Code::PermissionDenied
    );
    // A member names the owner: still acts as the member.
    assert_eq!(
        code(client.kick_with(&kick_owner, &as_user(member)).await),
        Code::PermissionDenied
    );
    let promote = SetRoleRequest {
        group_id: group,
        user_id: member,
        role: GroupRole::Admin as i32,
    };
    assert_eq!(
        code(client.set_role_with(&promote, &as_user(member)).await),
        Code::PermissionDenied
    );

    let page = client
        .members_with(
            &MembersRequest {
                group_id: group,
                after_user_id: 0,
                limit: 0,
            },
            &as_user(owner),
        )
        .await
        .unwrap();
    let roster: Vec<(u64, i32)> = page.members.iter().map(|m| (m.user_id, m.role)).collect();
    assert_eq!(
        roster,
        vec![
            (owner, GroupRole::Owner as i32),
            (member, GroupRole::Member as i32)
        ]
    );
}

async fn the_handler_takes_its_caller_from_the_context(sql: Sql) {
    let ids = add_users(&sql, "h", 2).await;
    let groups = Groups::new(sql.clone(), Bus::in_process(), Settings::default());
    let request = CreateGroupRequest {
        name: "direct".into(),
        description: String::new(),
        join_policy: JoinPolicy::Open as i32,
        member_ids: vec![ids[1]],
    };
    let info = groups
        .create(identity::context_for(&User::new(ids[0])), request.clone())
        .await
        .unwrap();
    assert_eq!(info.owner_id, ids[0]);
    assert_eq!(info.member_count, 2);
    let status = groups
        .create(identity::context_for_service("gateway"), request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mine = groups
        .my_groups(identity::context_for(&User::new(ids[1])), Empty {})
        .await
        .unwrap();
    assert_eq!(mine.groups, vec![info]);
}

async fn cached(bus: &Bus, group: u64) -> bool {
    bus.cache.get(keys::members(group)).await.unwrap().is_some()
}

async fn writes_delete_the_cached_member_list(sql: Sql) {
    let ids = add_users(&sql, "w", 4).await;
    let (owner, member, other, joiner) = (ids[0], ids[1], ids[2], ids[3]);
    let bus = Bus::in_process();
    let (_server, client) = service(&sql, &bus, Settings::default());
    let me = as_user(owner);
    let group = client
        .create_with(&create("g", JoinPolicy::Open, &[member]), &me)
        .await
        .unwrap()
        .group_id;
    let id = GroupId { group_id: group };
    let user = |user_id| GroupUser {
        group_id: group,
        user_id,
    };
    let fill = || async {
        bus.cache
            .set(
                keys::members(group),
                Bytes::from_static(b"stale"),
                Duration::from_secs(600),
            )
            .await
            .unwrap();
        assert!(cached(&bus, group).await);
    };
    // Each write, with the list cached before it.
    macro_rules! step {
        ($name:literal, $call:expr) => {
            fill().await;
            $call.await.unwrap_or_else(|err| panic!("{}: {err}", $name));
            assert!(
                !cached(&bus, group).await,
                "{} left the member list cached",
                $name
            );
        };
    }
    let add = GroupUsers {
        group_id: group,
        user_ids: vec![other],
    };
    step!("invite", client.invite_with(&add, &me));
    let enter = JoinRequest {
        group_id: group,
        message: String::new(),
    };
    step!("join", client.join_with(&enter, &as_user(joiner)));
    let promote = SetRoleRequest {
        group_id: group,
        user_id: member,
        role: 2,
    };
    step!("set role", client.set_role_with(&promote, &me));
    let mute = MuteRequest {
        group_id: group,
        user_id: other,
        until_ms: i64::MAX,
    };
    step!("mute", client.mute_with(&mute, &me));
    step!("unmute", client.unmute_with(&user(other), &me));
    let hush = MuteAllRequest {
        group_id: group,
        muted: true,
    };
    step!("mute all", client.mute_all_with(&hush, &me));
    let rename = UpdateGroupRequest {
        group_id: group,
        name: Some("h".into()),
        description: None,
        join_policy: None,
    };
    step!("update", client.update_info_with(&rename, &me));
    step!("kick", client.kick_with(&user(other), &me));
    step!("leave", client.leave_with(&id, &as_user(joiner)));
    let transfer = SetRoleRequest {
        group_id: group,
        user_id: member,
        role: 3,
    };
    step!("transfer", client.set_role_with(&transfer, &me));
    step!("dismiss", client.dismiss_with(&id, &as_user(member)));
    // Reads leave the cache alone.
    let other_group = client
        .create_with(&create("g2", JoinPolicy::Open, &[]), &me)
        .await
        .unwrap()
        .group_id;
    bus.cache
        .set(
            keys::members(other_group),
            Bytes::from_static(b"kept"),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    client
        .info_with(
            &GroupId {
                group_id: other_group,
            },
            &me,
        )
        .await
        .unwrap();
    client.my_groups_with(&Empty {}, &me).await.unwrap();
    assert!(cached(&bus, other_group).await);
}

async fn a_failing_cache_fails_no_call(sql: Sql) {
    let ids = add_users(&sql, "d", 3).await;
    let bus = Bus {
        cache: Arc::new(DownCache),
        ..Bus::in_process()
    };
    let (_server, client) = service(&sql, &bus, Settings::default());
    let me = as_user(ids[0]);
    let group = client
        .create_with(&create("g", JoinPolicy::Open, &[]), &me)
        .await
        .unwrap()
        .group_id;
    let added = client
        .invite_with(
            &GroupUsers {
                group_id: group,
                user_ids: vec![ids[1], ids[2]],
            },
            &me,
        )
        .await
        .unwrap();
    assert_eq!(added.user_ids, vec![ids[1], ids[2]]);
    client
        .kick_with(
            &GroupUser {
                group_id: group,
                user_id: ids[2],
            },
            &me,
        )
        .await
        .unwrap();
    client
        .dismiss_with(&GroupId { group_id: group }, &me)
        .await
        .unwrap();
    assert_eq!(
        code(client.info_with(&GroupId { group_id: group }, &me).await),
        Code::NotFound
    );
}

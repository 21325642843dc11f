//! Who is in a group, on SQLite and MariaDB: creation and its checks, invitations, open
//! and approval joins, leaving, a 1,000-member group's pages, size limits.

mod support;

use im_common::on_both;

use im_common::bus::Bus;
use im_common::proto::{
    Empty, GroupId, GroupUsers, JoinPolicy, JoinRequest, MembersRequest, RespondJoinRequest,
};
use im_common::store::Sql;
use im_group::Settings;
use mprpc::Code;
use support::*;

on_both!(creation_checks_its_input);
on_both!(hostile_text_round_trips);
on_both!(invitations_follow_the_join_policy);
on_both!(approval_joins_wait_for_an_admin);
on_both!(open_joins_are_immediate);
on_both!(a_thousand_members_are_paged);
on_both!(groups_stay_within_max_members);
on_both!(nobody_adds_a_user_who_blocked_them);

fn invite(group: u64, users: &[u64]) -> GroupUsers {
    GroupUsers {
        group_id: group,
        user_ids: users.to_vec(),
    }
}

fn join(group: u64, message: &str) -> JoinRequest {
    JoinRequest {
        group_id: group,
        message: message.to_owned(),
    }
}

fn page(group: u64, after: u64, limit: u32) -> MembersRequest {
    MembersRequest {
        group_id: group,
        after_user_id: after,
        limit,
    }
}

async fn creation_checks_its_input(sql: Sql) {
    let ids = add_users(&sql, "c", 3).await;
    let (_server, client) = default_service(&sql);
    let me = as_user(ids[0]);
    let mut bad = vec![
        create("", JoinPolicy::Open, &[]),
        create(" \t ", JoinPolicy::Open, &[]),
        create(&"n".repeat(129), JoinPolicy::Open, &[]),
    ];
    let mut long_description = create("ok", JoinPolicy::Open, &[]);
    long_description.description = "d".repeat(4097);
    bad.push(long_description);
    let mut policy = create("ok", JoinPolicy::Open, &[]);
    policy.join_policy = 2;
    bad.push(policy);
    bad.push(create("ok", JoinPolicy::Open, &vec![ids[1]; 5001]));
    for request in &bad {
        let (code_, message) = failure(client.create_with(request, &me).await);
        assert_eq!(code_, Code::InvalidArgument, "{message}");
        assert!(!message.is_empty());
    }
    let (_, message) = failure(client.create_with(&bad[0], &me).await);
    assert!(message.contains("name"), "{message}");
    let (_, message) = failure(client.create_with(&bad[3], &me).await);
    assert!(message.contains("description"), "{message}");
    let mine = client.my_groups_with(&Empty {}, &me).await.unwrap();
    assert!(mine.groups.is_empty(), "nothing was created");

    // Limits are inclusive; unknown ids, 0, repeats and the caller are skipped.
    let mut edge = create(&"n".repeat(128), JoinPolicy::Approval, &[]);
    edge.description = "d".repeat(4096);
    edge.member_ids = vec![ids[2], 0, 999_999, ids[1], ids[2], ids[0]];
    let info = client.create_with(&edge, &me).await.unwrap();
    assert_eq!(info.owner_id, ids[0]);
    assert_eq!(info.member_count, 3);
    assert_eq!(info.join_policy, JoinPolicy::Approval as i32);
    let members = client
        .members_with(&page(info.group_id, 0, 0), &as_user(ids[2]))
        .await
        .unwrap();
    let listed: Vec<u64> = members.members.iter().map(|m| m.user_id).collect();
    assert_eq!(listed, ids);
    assert!(!members.has_more);
    assert_eq!(
        client
            .info_with(
                &GroupId {
                    group_id: info.group_id
                },
                &me
            )
            .await
            .unwrap(),
        info
    );
}

async fn hostile_text_round_trips(sql: Sql) {
    let me = add_user(&sql, "h").await;
    let (_server, client) = default_service(&sql);
    for text in [
        "it's \"quoted\" \\",
        "'; DROP TABLE chat_groups; --",
        "nul\0byte",
        "emoji 🎉👩‍👩‍👧",
    ] {
        let mut request = create(text, JoinPolicy::Open, &[]);
        request.description = format!("about {text}");
        let created = client.create_with(&request, &as_user(me)).await.unwrap();
        let info = client
            .info_with(
                &GroupId {
                    group_id: created.group_id,
                },
                &as_user(me),
            )
            .await
            .unwrap();
        assert_eq!(info.name.as_bytes(), text.as_bytes());
        assert_eq!(info.description, format!("about {text}"));
    }
    let mine = client
        .my_groups_with(&Empty {}, &as_user(me))
        .await
        .unwrap();
    assert_eq!(mine.groups.len(), 4);
}

async fn invitations_follow_the_join_policy(sql: Sql) {
    let ids = add_users(&sql, "i", 6).await;
    let (owner, member, a, b, c, outsider) = (ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]);
    let (_server, client) = default_service(&sql);
    let open = client
        .create_with(
            &create("open", JoinPolicy::Open, &[member]),
            &as_user(owner),
        )
        .await
        .unwrap()
        .group_id;
    let closed = client
        .create_with(
            &create("closed", JoinPolicy::Approval, &[member]),
            &as_user(owner),
        )
        .await
        .unwrap()
        .group_id;

    // A non-member invites nowhere; a member only into the open group.
    for group in [open, closed] {
        assert_eq!(
            code(
                client
                    .invite_with(&invite(group, &[a]), &as_user(outsider))
                    .await
            ),
            Code::PermissionDenied
        );
    }
    assert_eq!(
        code(
            client
                .invite_with(&invite(closed, &[a]), &as_user(member))
                .await
        ),
        Code::PermissionDenied
    );
    // Returned: the users actually added, in the order asked.
    let added = client
        .invite_with(
            &invite(open, &[b, member, 424_242, a, b, 0]),
            &as_user(member),
        )
        .await
        .unwrap();
    assert_eq!(added.user_ids, vec![b, a]);
    let again = client
        .invite_with(&invite(open, &[a, b]), &as_user(member))
        .await
        .unwrap();
    assert!(again.user_ids.is_empty());
    let added = client
        .invite_with(&invite(closed, &[c, a]), &as_user(owner))
        .await
        .unwrap();
    assert_eq!(added.user_ids, vec![c, a]);
    let count = |group| {
        let client = client.clone();
        async move {
            client
                .info_with(&GroupId { group_id: group }, &as_user(owner))
                .await
                .unwrap()
                .member_count
        }
    };
    assert_eq!(count(open).await, 4);
    assert_eq!(count(closed).await, 4);
    assert_eq!(
        code(
            client
                .invite_with(&invite(open + 1000, &[a]), &as_user(owner))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(client.invite_with(&invite(0, &[a]), &as_user(owner)).await),
        Code::InvalidArgument
    );
}

async fn approval_joins_wait_for_an_admin(sql: Sql) {
    let ids = add_users(&sql, "a", 5).await;
    let (owner, member, asker, refused, stranger) = (ids[0], ids[1], ids[2], ids[3], ids[4]);
    let (_server, client) = default_service(&sql);
    let group = client
        .create_with(
            &create("closed", JoinPolicy::Approval, &[member]),
            &as_user(owner),
        )
        .await
        .unwrap()
        .group_id;
    let id = GroupId { group_id: group };

    let reply = client
        .join_with(&join(group, "let me in 🙏"), &as_user(asker))
        .await
        .unwrap();
    assert!(!reply.joined);
    client
        .join_with(&join(group, "no"), &as_user(refused))
        .await
        .unwrap();
    assert!(
        client
            .join_with(&join(group, "hi"), &as_user(member))
            .await
            .unwrap()
            .joined,
        "a member is joined already"
    );
    assert_eq!(
        code(
            client
                .join_with(&join(group, &"m".repeat(129)), &as_user(stranger))
                .await
        ),
        Code::InvalidArgument
    );
    // Waiting is not membership: no reading an approval group.
    assert_eq!(
        code(
            client
                .members_with(&page(group, 0, 10), &as_user(asker))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(client.info_with(&id, &as_user(asker)).await),
        Code::PermissionDenied
    );

    assert_eq!(
        code(client.list_join_requests_with(&id, &as_user(member)).await),
        Code::PermissionDenied
    );
    let pending = client
        .list_join_requests_with(&id, &as_user(owner))
        .await
        .unwrap();
    let listed: Vec<(u64, &str)> = pending
        .requests
        .iter()
        .map(|r| (r.user_id, r.message.as_str()))
        .collect();
    assert_eq!(listed, vec![(asker, "let me in 🙏"), (refused, "no")]);

    let respond = |user, accept| RespondJoinRequest {
        group_id: group,
        user_id: user,
        accept,
    };
    // Answering one's own request is not an admin's answer.
    assert_eq!(
        code(
            client
                .respond_join_with(&respond(asker, true), &as_user(asker))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            client
                .respond_join_with(&respond(asker, true), &as_user(member))
                .await
        ),
        Code::PermissionDenied
    );
    client
        .respond_join_with(&respond(asker, true), &as_user(owner))
        .await
        .unwrap();
    client
        .respond_join_with(&respond(refused, false), &as_user(owner))
        .await
        .unwrap();
    assert_eq!(
        code(
            client
                .respond_join_with(&respond(refused, true), &as_user(owner))
                .await
        ),
        Code::NotFound
    );
    assert!(
        client
            .join_with(&join(group, ""), &as_user(asker))
            .await
            .unwrap()
            .joined
    );
    client.info_with(&id, &as_user(asker)).await.unwrap();
    assert_eq!(
        code(client.info_with(&id, &as_user(refused)).await),
        Code::PermissionDenied
    );
    let pending = client
        .list_join_requests_with(&id, &as_user(owner))
        .await
        .unwrap();
    assert!(pending.requests.is_empty());
}

async fn open_joins_are_immediate(sql: Sql) {
    let ids = add_users(&sql, "o", 3).await;
    let (owner, joiner, reader) = (ids[0], ids[1], ids[2]);
    let (_server, client) = default_service(&sql);
    let group = client
        .create_with(&create("open", JoinPolicy::Open, &[]), &as_user(owner))
        .await
        .unwrap()
        .group_id;
    let id = GroupId { group_id: group };
    // Anyone reads an open group's information, but not its members.
    assert_eq!(
        client
            .info_with(&id, &as_user(reader))
            .await
            .unwrap()
            .member_count,
        1
    );
    assert_eq!(
        code(
            client
                .members_with(&page(group, 0, 10), &as_user(reader))
                .await
        ),
        Code::PermissionDenied
    );
    assert!(
        client
            .join_with(&join(group, ""), &as_user(joiner))
            .await
            .unwrap()
            .joined
    );
    assert!(
        client
            .join_with(&join(group, ""), &as_user(joiner))
            .await
            .unwrap()
            .joined
    );
    assert_eq!(
        client
            .info_with(&id, &as_user(reader))
            .await
            .unwrap()
            .member_count,
        2
    );
    let mine = client
        .my_groups_with(&Empty {}, &as_user(joiner))
        .await
        .unwrap();
    assert_eq!(mine.groups.len(), 1);
    assert_eq!(mine.groups[0].group_id, group);

    // Leaving twice: the second time the caller is not a member.
    client.leave_with(&id, &as_user(joiner)).await.unwrap();
    assert_eq!(
        code(client.leave_with(&id, &as_user(joiner)).await),
        Code::PermissionDenied
    );
    assert!(
        client
            .my_groups_with(&Empty {}, &as_user(joiner))
            .await
            .unwrap()
            .groups
            .is_empty()
    );
}

async fn a_thousand_members_are_paged(sql: Sql) {
    let ids = add_users(&sql, "t", 1000).await;
    let (_server, client) = default_service(&sql);
    let owner = ids[0];
    let created = client
        .create_with(&create("big", JoinPolicy::Open, &ids[1..]), &as_user(owner))
        .await
        .unwrap();
    assert_eq!(created.member_count, 1000);
    let group = created.group_id;
    let reader = as_user(ids[999]);
    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let page = client
            .members_with(&page(group, after, 0), &reader)
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.members.iter().map(|m| m.user_id));
        let Some(last) = page.members.last() else {
            break;
        };
        after = last.user_id;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(pages, 10, "the default page holds 100");
    let mut expected = ids.clone();
    expected.sort_unstable();
    assert_eq!(seen, expected);
    let whole = client
        .members_with(&page(group, 0, 1000), &reader)
        .await
        .unwrap();
    assert_eq!(whole.members.len(), 1000);
    assert!(!whole.has_more);
    let (code_, message) = failure(client.members_with(&page(group, 0, 1001), &reader).await);
    assert_eq!(code_, Code::InvalidArgument);
    assert!(message.contains("1000"), "{message}");
    let mine = client.my_groups_with(&Empty {}, &reader).await.unwrap();
    assert_eq!(mine.groups[0].member_count, 1000);
}

async fn groups_stay_within_max_members(sql: Sql) {
    let ids = add_users(&sql, "m", 6).await;
    let settings = Settings {
        max_members: 4,
        ..Settings::default()
    };
    let (_server, client) = service(&sql, &Bus::in_process(), settings);
    let (owner, me) = (ids[0], as_user(ids[0]));
    let (code_, message) = failure(
        client
            .create_with(&create("big", JoinPolicy::Open, &ids[1..5]), &me)
            .await,
    );
    assert_eq!(code_, Code::InvalidArgument);
    assert!(message.contains("at most 4"), "{message}");
    let group = client
        .create_with(&create("fits", JoinPolicy::Approval, &ids[1..3]), &me)
        .await
        .unwrap()
        .group_id;
    // Nobody is added by an invitation that would overflow.
    assert_eq!(
        code(client.invite_with(&invite(group, &ids[3..5]), &me).await),
        Code::FailedPrecondition
    );
    client
        .join_with(&join(group, ""), &as_user(ids[4]))
        .await
        .unwrap();
    client
        .invite_with(&invite(group, &[ids[3]]), &me)
        .await
        .unwrap();
    let accept = RespondJoinRequest {
        group_id: group,
        user_id: ids[4],
        accept: true,
    };
    assert_eq!(
        code(client.respond_join_with(&accept, &me).await),
        Code::FailedPrecondition
    );
    let info = client
        .info_with(&GroupId { group_id: group }, &me)
        .await
        .unwrap();
    assert_eq!(info.member_count, 4);
    assert_eq!(info.owner_id, owner);
    // The request survives for when there is room.
    client
        .leave_with(&GroupId { group_id: group }, &as_user(ids[1]))
        .await
        .unwrap();
    client.respond_join_with(&accept, &me).await.unwrap();
}

async fn block(sql: &Sql, blocker: u64, blocked: u64) {
    sqlx::query("INSERT INTO blocks (user_id, blocked_id, created_at) VALUES (?, ?, 0)")
        .bind(i64::try_from(blocker).unwrap())
        .bind(i64::try_from(blocked).unwrap())
        .execute(sql.pool())
        .await
        .unwrap();
}

async fn nobody_adds_a_user_who_blocked_them(sql: Sql) {
    let ids = add_users(&sql, "blk", 4).await;
    let (owner, member, victim, other) = (ids[0], ids[1], ids[2], ids[3]);
    block(&sql, victim, member).await;
    block(&sql, victim, owner).await;
    let (_server, client) = default_service(&sql);
    let open = client
        .create_with(
            &create("open", JoinPolicy::Open, &[member]),
            &as_user(owner),
        )
        .await
        .unwrap()
        .group_id;

    // A member of an open group, and its owner, try to add the user who blocked them: the
    // victim is skipped exactly as an id that names nobody is.
    for inviter in [member, owner] {
        let added = client
            .invite_with(&invite(open, &[victim, 424_242, other]), &as_user(inviter))
            .await
            .unwrap();
        assert!(!added.user_ids.contains(&victim), "{added:?}");
    }
    let members = client
        .members_with(&page(open, 0, 100), &as_user(owner))
        .await
        .unwrap();
    let ids: Vec<u64> = members.members.iter().map(|m| m.user_id).collect();
    assert!(
        !ids.contains(&victim),
        "the blocked inviter added {victim}: {ids:?}"
    );
    assert!(ids.contains(&other));

    // Nor into a new group.
    let created = client
        .create_with(
            &create("trap", JoinPolicy::Approval, &[victim, other]),
            &as_user(member),
        )
        .await
        .unwrap();
    assert_eq!(created.member_count, 2, "the creator and `other` only");

    // Someone the victim did not block may add them.
    let added = client
        .invite_with(&invite(open, &[victim]), &as_user(other))
        .await
        .unwrap();
    assert_eq!(added.user_ids, vec![victim]);
}

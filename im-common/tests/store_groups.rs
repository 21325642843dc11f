//! The group store's suite, run on SQLite and on MariaDB: hostile text kept byte for byte,
//! the group conversation's members kept in step with the group's, join requests, leaving,
//! kicking, roles and ownership, mutes, dismissal, and a 1,000-member group paged through.

use im_common::StoreError;
use im_common::proto::{GroupRole, JoinPolicy};
use im_common::store::Sql;
use im_common::store::groups::{Departure, GroupStore, GroupUpdate, JoinState, NewGroup};

use im_common::on_both;

on_both!(text_round_trips_byte_for_byte);
on_both!(creation_fills_the_conversation);
on_both!(new_members_start_with_nothing_unread);
on_both!(join_requests_are_settled_once);
on_both!(leaving_and_removal_follow_roles);
on_both!(roles_and_ownership_transfer);
on_both!(mutes_follow_roles);
on_both!(a_dismissed_group_is_gone);
on_both!(a_thousand_members_are_paged_through);
on_both!(only_existing_users_are_found);
on_both!(concurrent_additions_stay_within_the_limit);

const HOSTILE: &[&str] = &[
    "it's \"quoted\" \\ back`tick`",
    "'; DROP TABLE chat_groups; --",
    "nul\0in\0the middle\0",
    "emoji 🎉👩‍👩‍👧 and 中文",
    "  spaces around  ",
];

fn new_group(owner: u64, members: &[u64]) -> NewGroup {
    NewGroup {
        name: "team".to_owned(),
        description: String::new(),
        join_policy: JoinPolicy::Open,
        owner,
        members: members.to_vec(),
    }
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap()
}

async fn conv_members(sql: &Sql, group: u64) -> Vec<(u64, i64)> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT user_id, read_seq FROM conv_members WHERE conv_id = ? ORDER BY user_id",
    )
    .bind(format!("g:{group}"))
    .fetch_all(sql.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(user, seq)| (u64::try_from(user).unwrap(), seq))
        .collect()
}

async fn set_last_seq(sql: &Sql, group: u64, seq: i64) {
    sqlx::query("UPDATE conversations SET last_seq = ? WHERE conv_id = ?")
        .bind(seq)
        .bind(format!("g:{group}"))
        .execute(sql.pool())
        .await
        .unwrap();
}

async fn role(sql: &Sql, group: u64, user: u64) -> Option<GroupRole> {
    let member = sql.member(group, user).await.unwrap()?;
    Some(GroupRole::try_from(member.role).unwrap())
}

fn precondition<T: std::fmt::Debug>(result: Result<T, StoreError>) -> String {
    match result {
        Err(StoreError::Precondition(why)) => why,
        other => panic!("expected a precondition failure, got {other:?}"),
    }
}

fn not_found<T: std::fmt::Debug>(result: Result<T, StoreError>) -> &'static str {
    match result {
        Err(StoreError::NotFound(what)) => what,
        other => panic!("expected not found, got {other:?}"),
    }
}

async fn text_round_trips_byte_for_byte(sql: Sql) {
    let mut ids = Vec::new();
    for (n, text) in HOSTILE.iter().enumerate() {
        let created = sql
            .create_group(&NewGroup {
                name: (*text).to_owned(),
                description: format!("{text}{text}"),
                join_policy: JoinPolicy::Approval,
                owner: 10 + n as u64,
                members: vec![],
            })
            .await
            .unwrap();
        assert_eq!(created.name, *text);
        ids.push(created.group_id);
        for read in [
            sql.group(created.group_id).await.unwrap().unwrap(),
            sql.group_from_replica(created.group_id)
                .await
                .unwrap()
                .unwrap(),
            sql.groups_of(10 + n as u64).await.unwrap().remove(0),
        ] {
            assert_eq!(read, created);
            assert_eq!(read.name.as_bytes(), text.as_bytes());
            assert_eq!(read.description, format!("{text}{text}"));
            assert_eq!(read.join_policy, JoinPolicy::Approval as i32);
        }
        sql.request_join(created.group_id, 99, text).await.unwrap();
        let requests = sql.join_requests(created.group_id, 10).await.unwrap();
        assert_eq!(requests[0].message, *text);
    }
    // Updates carry hostile text too, and only the fields given change.
    let first = ids[0];
    let updated = sql
        .update_group(
            first,
            &GroupUpdate {
                name: Some(HOSTILE[1].to_owned()),
                description: None,
                join_policy: Some(JoinPolicy::Open),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(updated.name, HOSTILE[1]);
    assert_eq!(updated.description, format!("{0}{0}", HOSTILE[0]));
    assert_eq!(updated.join_policy, JoinPolicy::Open as i32);
    let unchanged = sql
        .update_group(first, &GroupUpdate::default())
        .await
        .unwrap();
    assert_eq!(unchanged, Some(updated));
    let groups: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chat_groups")
        .fetch_one(sql.pool())
        .await
        .unwrap();
    assert_eq!(groups, HOSTILE.len() as i64);
}

async fn creation_fills_the_conversation(sql: Sql) {
    // The owner in the list and repeats are added once.
    let created = sql
        .create_group(&new_group(5, &[7, 6, 7, 5, 8]))
        .await
        .unwrap();
    let group = created.group_id;
    assert_eq!(created.owner_id, 5);
    assert_eq!(created.member_count, 4);
    assert!(!created.mute_all && created.created_at_ms > 0);
    assert_eq!(sql.group(group).await.unwrap(), Some(created.clone()));
    assert_eq!(sql.member_ids(group).await.unwrap(), vec![5, 6, 7, 8]);
    assert_eq!(role(&sql, group, 5).await, Some(GroupRole::Owner));
    for user in [6, 7, 8] {
        assert_eq!(role(&sql, group, user).await, Some(GroupRole::Member));
    }
    assert_eq!(role(&sql, group, 9).await, None);
    let (last_seq, updated_at): (i64, i64) =
        sqlx::query_as("SELECT last_seq, updated_at FROM conversations WHERE conv_id = ?")
            .bind(format!("g:{group}"))
            .fetch_one(sql.pool())
            .await
            .unwrap();
    assert_eq!(last_seq, 0);
    assert!(updated_at > 0);
    assert_eq!(
        conv_members(&sql, group).await,
        vec![(5, 0), (6, 0), (7, 0), (8, 0)]
    );
    // Two groups get two ids and two conversations.
    let other = sql.create_group(&new_group(5, &[])).await.unwrap();
    assert_ne!(other.group_id, group);
    assert_eq!(conv_members(&sql, other.group_id).await, vec![(5, 0)]);
    let mine: Vec<u64> = sql
        .groups_of(5)
        .await
        .unwrap()
        .iter()
        .map(|g| g.group_id)
        .collect();
    assert_eq!(mine, vec![group, other.group_id]);
}

async fn new_members_start_with_nothing_unread(sql: Sql) {
    let group = sql
        .create_group(&new_group(1, &[2]))
        .await
        .unwrap()
        .group_id;
    set_last_seq(&sql, group, 7).await;
    let added = sql.add_members(group, &[4, 2, 3, 4], 10).await.unwrap();
    assert_eq!(
        added,
        vec![4, 3],
        "members and repeats are skipped, order kept"
    );
    assert_eq!(
        conv_members(&sql, group).await,
        vec![(1, 0), (2, 0), (3, 7), (4, 7)]
    );
    assert_eq!(sql.group(group).await.unwrap().unwrap().member_count, 4);
    assert!(sql.add_members(group, &[3], 10).await.unwrap().is_empty());
    // Over the limit: nobody is added.
    let why = precondition(sql.add_members(group, &[5, 6, 7], 6).await);
    assert!(
        why.contains("7 members") && why.contains("limit of 6"),
        "{why}"
    );
    assert_eq!(sql.member_ids(group).await.unwrap(), vec![1, 2, 3, 4]);
    assert_eq!(
        sql.add_members(group, &[5, 6], 6).await.unwrap(),
        vec![5, 6]
    );
    assert_eq!(
        not_found(sql.add_members(group + 100, &[5], 6).await),
        "group"
    );
}

async fn join_requests_are_settled_once(sql: Sql) {
    let group = sql
        .create_group(&new_group(1, &[2]))
        .await
        .unwrap()
        .group_id;
    assert_eq!(
        sql.request_join(group, 2, "me").await.unwrap(),
        JoinState::Member
    );
    for (user, message) in [(3, "first"), (4, "please"), (3, "second")] {
        assert_eq!(
            sql.request_join(group, user, message).await.unwrap(),
            JoinState::Requested
        );
    }
    let requests = sql.join_requests(group, 10).await.unwrap();
    let listed: Vec<(u64, &str)> = requests
        .iter()
        .map(|r| (r.user_id, r.message.as_str()))
        .collect();
    assert_eq!(listed, vec![(3, "first"), (4, "please")]);
    assert!(requests.iter().all(|r| r.group_id == group));
    assert_eq!(sql.join_requests(group, 1).await.unwrap().len(), 1);

    set_last_seq(&sql, group, 3).await;
    sql.respond_join(group, 3, true, 10).await.unwrap();
    assert_eq!(role(&sql, group, 3).await, Some(GroupRole::Member));
    assert!(conv_members(&sql, group).await.contains(&(3, 3)));
    sql.respond_join(group, 4, false, 10).await.unwrap();
    assert_eq!(role(&sql, group, 4).await, None);
    assert!(sql.join_requests(group, 10).await.unwrap().is_empty());
    assert_eq!(
        not_found(sql.respond_join(group, 4, true, 10).await),
        "join request"
    );

    // Accepting over the limit fails and keeps the request.
    sql.request_join(group, 5, "").await.unwrap();
    precondition(sql.respond_join(group, 5, true, 3).await);
    assert_eq!(sql.join_requests(group, 10).await.unwrap().len(), 1);
    // Added another way, the request is settled with it.
    sql.add_members(group, &[5], 10).await.unwrap();
    assert!(sql.join_requests(group, 10).await.unwrap().is_empty());
    assert_eq!(
        not_found(sql.request_join(group + 100, 9, "").await),
        "group"
    );
}

async fn leaving_and_removal_follow_roles(sql: Sql) {
    let group = sql
        .create_group(&new_group(1, &[2, 3, 4]))
        .await
        .unwrap()
        .group_id;
    sql.set_role(group, 2, GroupRole::Admin).await.unwrap();
    assert_eq!(sql.leave(group, 3).await.unwrap(), Some(Departure::Left));
    assert_eq!(role(&sql, group, 3).await, None);
    assert!(!conv_members(&sql, group).await.iter().any(|(u, _)| *u == 3));
    assert_eq!(sql.leave(group, 3).await.unwrap(), None);
    let why = precondition(sql.leave(group, 1).await);
    assert!(why.contains("transfer ownership"), "{why}");

    // Removal never goes above the given role, and never takes the owner.
    assert!(
        !sql.remove_member(group, 2, GroupRole::Member)
            .await
            .unwrap()
    );
    assert!(!sql.remove_member(group, 1, GroupRole::Owner).await.unwrap());
    assert!(
        sql.remove_member(group, 4, GroupRole::Member)
            .await
            .unwrap()
    );
    assert!(
        !sql.remove_member(group, 4, GroupRole::Member)
            .await
            .unwrap()
    );
    assert!(sql.remove_member(group, 2, GroupRole::Admin).await.unwrap());
    assert_eq!(conv_members(&sql, group).await, vec![(1, 0)]);

    // The last member, the owner, leaves: the group is dismissed.
    assert_eq!(
        sql.leave(group, 1).await.unwrap(),
        Some(Departure::Dismissed)
    );
    assert_eq!(sql.group(group).await.unwrap(), None);
    assert!(conv_members(&sql, group).await.is_empty());
    assert_eq!(not_found(sql.leave(group, 1).await), "group");
}

async fn roles_and_ownership_transfer(sql: Sql) {
    let group = sql
        .create_group(&new_group(1, &[2, 3]))
        .await
        .unwrap()
        .group_id;
    sql.set_role(group, 2, GroupRole::Admin).await.unwrap();
    sql.set_role(group, 2, GroupRole::Admin).await.unwrap();
    assert_eq!(role(&sql, group, 2).await, Some(GroupRole::Admin));
    sql.set_role(group, 2, GroupRole::Member).await.unwrap();
    assert_eq!(role(&sql, group, 2).await, Some(GroupRole::Member));
    precondition(sql.set_role(group, 1, GroupRole::Member).await);
    precondition(sql.set_role(group, 2, GroupRole::Owner).await);
    assert_eq!(
        not_found(sql.set_role(group, 9, GroupRole::Admin).await),
        "member"
    );
    assert_eq!(role(&sql, group, 1).await, Some(GroupRole::Owner));

    precondition(sql.transfer_ownership(group, 2, 3).await);
    assert_eq!(
        not_found(sql.transfer_ownership(group, 1, 9).await),
        "member"
    );
    sql.transfer_ownership(group, 1, 3).await.unwrap();
    assert_eq!(sql.group(group).await.unwrap().unwrap().owner_id, 3);
    assert_eq!(role(&sql, group, 3).await, Some(GroupRole::Owner));
    assert_eq!(role(&sql, group, 1).await, Some(GroupRole::Admin));
    // The old owner can no longer hand it on; the new one can.
    precondition(sql.transfer_ownership(group, 1, 2).await);
    sql.transfer_ownership(group, 3, 1).await.unwrap();
    assert_eq!(sql.group(group).await.unwrap().unwrap().owner_id, 1);
    assert_eq!(role(&sql, group, 3).await, Some(GroupRole::Admin));
    // The old owner may now leave.
    assert_eq!(sql.leave(group, 3).await.unwrap(), Some(Departure::Left));
}

async fn mutes_follow_roles(sql: Sql) {
    let group = sql
        .create_group(&new_group(1, &[2, 3]))
        .await
        .unwrap()
        .group_id;
    sql.set_role(group, 2, GroupRole::Admin).await.unwrap();
    let until = 4_000_000_000_000;
    assert!(!sql.mute(group, 2, until, GroupRole::Member).await.unwrap());
    assert!(sql.mute(group, 3, until, GroupRole::Member).await.unwrap());
    assert!(sql.mute(group, 2, until, GroupRole::Admin).await.unwrap());
    assert!(!sql.mute(group, 9, until, GroupRole::Admin).await.unwrap());
    for user in [2, 3] {
        let member = sql.member(group, user).await.unwrap().unwrap();
        assert_eq!(member.muted_until_ms, until);
    }
    assert!(sql.mute(group, 3, 0, GroupRole::Member).await.unwrap());
    assert_eq!(
        sql.member(group, 3).await.unwrap().unwrap().muted_until_ms,
        0
    );

    assert!(sql.set_mute_all(group, true).await.unwrap());
    assert!(sql.group(group).await.unwrap().unwrap().mute_all);
    assert!(sql.set_mute_all(group, false).await.unwrap());
    assert!(!sql.group(group).await.unwrap().unwrap().mute_all);
    assert!(!sql.set_mute_all(group + 100, true).await.unwrap());
}

async fn a_dismissed_group_is_gone(sql: Sql) {
    let group = sql
        .create_group(&new_group(1, &[2, 3]))
        .await
        .unwrap()
        .group_id;
    sql.request_join(group, 4, "hi").await.unwrap();
    let kept = sql
        .create_group(&new_group(2, &[1]))
        .await
        .unwrap()
        .group_id;
    assert!(sql.dismiss(group).await.unwrap());
    assert!(!sql.dismiss(group).await.unwrap());

    assert_eq!(sql.group(group).await.unwrap(), None);
    assert_eq!(sql.group_from_replica(group).await.unwrap(), None);
    assert_eq!(sql.member(group, 1).await.unwrap(), None);
    assert!(sql.member_ids(group).await.unwrap().is_empty());
    assert!(sql.members(group, 0, 10).await.unwrap().0.is_empty());
    assert!(conv_members(&sql, group).await.is_empty());
    assert!(sql.join_requests(group, 10).await.unwrap().is_empty());
    let of_one: Vec<u64> = sql
        .groups_of(1)
        .await
        .unwrap()
        .iter()
        .map(|g| g.group_id)
        .collect();
    assert_eq!(of_one, vec![kept]);
    assert_eq!(not_found(sql.add_members(group, &[5], 10).await), "group");
    assert_eq!(not_found(sql.request_join(group, 5, "").await), "group");
    assert_eq!(
        not_found(sql.transfer_ownership(group, 1, 2).await),
        "group"
    );
    assert!(!sql.set_mute_all(group, true).await.unwrap());
    assert_eq!(
        sql.update_group(
            group,
            &GroupUpdate {
                name: Some("back".into()),
                ..GroupUpdate::default()
            }
        )
        .await
        .unwrap(),
        None
    );
    // The row stays, marked.
    let dismissed_at: Option<i64> =
        sqlx::query_scalar("SELECT dismissed_at FROM chat_groups WHERE group_id = ?")
            .bind(i(group))
            .fetch_one(sql.pool())
            .await
            .unwrap();
    assert!(dismissed_at.is_some_and(|at| at > 0));
}

async fn a_thousand_members_are_paged_through(sql: Sql) {
    let members: Vec<u64> = (2..=1000).rev().collect();
    let created = sql.create_group(&new_group(1, &members)).await.unwrap();
    assert_eq!(created.member_count, 1000);
    let group = created.group_id;
    assert_eq!(
        sql.group_from_replica(group)
            .await
            .unwrap()
            .unwrap()
            .member_count,
        1000
    );
    let mut seen = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let (page, has_more) = sql.members(group, after, 128).await.unwrap();
        pages += 1;
        assert!(page.len() <= 128);
        seen.extend(page.iter().map(|m| m.user_id));
        after = page.last().map_or(after, |m| m.user_id);
        if !has_more {
            break;
        }
        assert_eq!(page.len(), 128, "a page before the last is full");
    }
    assert_eq!(pages, 8);
    assert_eq!(seen, (1..=1000).collect::<Vec<_>>());
    // An exact fit says no more follow.
    let (last, has_more) = sql.members(group, 900, 100).await.unwrap();
    assert_eq!(last.len(), 100);
    assert!(!has_more);
    assert_eq!(sql.member_ids(group).await.unwrap().len(), 1000);
    assert_eq!(conv_members(&sql, group).await.len(), 1000);
    // And grows by invitation past the first thousand.
    let more: Vec<u64> = (1001..=1300).collect();
    assert_eq!(sql.add_members(group, &more, 5000).await.unwrap(), more);
    assert_eq!(sql.group(group).await.unwrap().unwrap().member_count, 1300);
}

async fn only_existing_users_are_found(sql: Sql) {
    let mut ids = Vec::new();
    for name in ["ann", "ben", "cat"] {
        sqlx::query(
            "INSERT INTO users (name, password_hash, nickname, avatar, bio, created_at) VALUES (?, '', ?, '', '', 0)",
        )
        .bind(name)
        .bind(name)
        .execute(sql.pool())
        .await
        .unwrap();
        let id: i64 = sqlx::query_scalar("SELECT user_id FROM users WHERE name = ?")
            .bind(name)
            .fetch_one(sql.pool())
            .await
            .unwrap();
        ids.push(u64::try_from(id).unwrap());
    }
    let asked = [ids[2], 0, 999_999, ids[0], ids[2], u64::MAX];
    assert_eq!(
        sql.existing_users(&asked).await.unwrap(),
        vec![ids[0], ids[2]]
    );
    assert!(sql.existing_users(&[]).await.unwrap().is_empty());
    let many: Vec<u64> = (1..=600).collect();
    assert_eq!(sql.existing_users(&many).await.unwrap(), ids);
}

async fn concurrent_additions_stay_within_the_limit(sql: Sql) {
    let group = sql.create_group(&new_group(1, &[])).await.unwrap().group_id;
    set_last_seq(&sql, group, 5).await;
    let tasks: Vec<_> = (100..116)
        .map(|user| {
            let sql = sql.clone();
            tokio::spawn(async move { sql.add_members(group, &[user, 1], 10).await })
        })
        .collect();
    let mut added = Vec::new();
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(users) => added.extend(users),
            Err(StoreError::Precondition(_)) => refused += 1,
            Err(err) => panic!("unexpected failure: {err}"),
        }
    }
    assert_eq!((added.len(), refused), (9, 7));
    let members = sql.member_ids(group).await.unwrap();
    assert_eq!(members.len(), 10);
    let conv = conv_members(&sql, group).await;
    assert_eq!(conv.len(), 10);
    assert!(
        conv.iter()
            .all(|(user, seq)| *seq == if *user == 1 { 0 } else { 5 })
    );
}

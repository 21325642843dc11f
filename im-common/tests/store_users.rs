//! The user store's suite, run on SQLite and on MariaDB: names and hostile text kept byte
//! for byte, sessions and their revocation, friend requests, friends and blocks.

use im_common::StoreError;
use im_common::proto::FriendRequestState;
use im_common::store::Sql;
use im_common::store::users::{Credentials, Direction, NewUser, ProfileUpdate, Session, UserStore};

use im_common::on_both;

on_both!(names_are_unique_and_text_round_trips);
on_both!(profiles_are_read_in_batches);
on_both!(sessions_are_revoked);
on_both!(friend_requests_are_settled_once);
on_both!(blocking_ends_friendship_and_requests);

fn new_user(name: &str) -> NewUser {
    NewUser {
        name: name.to_owned(),
        password_hash: format!("$argon2id$hash-of-{name}"),
        nickname: name.to_owned(),
    }
}

async fn create(sql: &Sql, name: &str) -> u64 {
    sql.create_user(new_user(name)).await.unwrap().user_id
}

/// Text that breaks naive SQL, C strings, narrow charsets and small columns.
fn hostile_texts() -> Vec<String> {
    vec![
        "'; DROP TABLE users; --".to_owned(),
        "it's \"quoted\" \\ back`tick`".to_owned(),
        "nul\0in\0the middle\0".to_owned(),
        "emoji 🦀 family 👩‍👩‍👧 flags 🇫🇷".to_owned(),
        " trailing and leading spaces ".to_owned(),
    ]
}

async fn names_are_unique_and_text_round_trips(sql: Sql) {
    let ada = sql.create_user(new_user("ada")).await.unwrap();
    assert!(ada.user_id > 0 && ada.created_at_ms > 0);
    assert_eq!((ada.name.as_str(), ada.nickname.as_str()), ("ada", "ada"));

    let err = sql.create_user(new_user("ada")).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict("user name")),
        "duplicate name gave {err:?}"
    );
    // Names compare byte for byte on both engines.
    let upper = create(&sql, "Ada").await;
    assert_ne!(upper, ada.user_id);

    // A hostile name is only data.
    let hostile_name = "'; DROP TABLE users; --";
    let hostile = create(&sql, hostile_name).await;
    let found = sql.user_by_name(hostile_name).await.unwrap().unwrap();
    assert_eq!(
        (found.user_id, found.name.as_str()),
        (hostile, hostile_name)
    );
    assert!(sql.user_by_name("' OR '1'='1").await.unwrap().is_none());
    assert_eq!(
        sql.credentials("ada").await.unwrap(),
        Some(Credentials {
            profile: ada.clone(),
            password_hash: "$argon2id$hash-of-ada".to_owned(),
        })
    );
    assert!(sql.credentials("nobody").await.unwrap().is_none());

    let big_bio: String = "é🦀x\0".repeat(4096 / 8);
    assert_eq!(big_bio.len(), 4096);
    for text in hostile_texts() {
        let update = ProfileUpdate {
            nickname: Some(text.clone()),
            avatar: Some(format!("https://example.org/{text}")),
            bio: Some(format!("{text}\n{big_bio}")),
        };
        let updated = sql.update_profile(ada.user_id, update).await.unwrap();
        let read = sql.user(ada.user_id).await.unwrap().unwrap();
        assert_eq!(updated, read);
        assert_eq!(read.nickname.as_bytes(), text.as_bytes());
        assert_eq!(read.avatar, format!("https://example.org/{text}"));
        assert_eq!(read.bio.as_bytes(), format!("{text}\n{big_bio}").as_bytes());
        assert_eq!(read.name, "ada");
    }
    // Fields left out stay as they were.
    let only_bio = ProfileUpdate {
        bio: Some(String::new()),
        ..ProfileUpdate::default()
    };
    let read = sql.update_profile(ada.user_id, only_bio).await.unwrap();
    assert_eq!(read.bio, "");
    assert_eq!(read.nickname, hostile_texts().pop().unwrap());
    let err = sql
        .update_profile(999_999, ProfileUpdate::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound("user")), "{err:?}");

    // The users table survived all of it.
    let all = sql.users(&[ada.user_id, upper, hostile]).await.unwrap();
    assert_eq!(all.len(), 3);
}

async fn profiles_are_read_in_batches(sql: Sql) {
    let mut ids = Vec::new();
    for n in 0..12 {
        ids.push(create(&sql, &format!("user{n}")).await);
    }
    // More ids than one IN list holds, most of them unknown.
    let mut asked: Vec<u64> = (1_000_000..1_000_600).collect();
    asked.extend(&ids);
    let mut found: Vec<u64> = sql
        .users(&asked)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.user_id)
        .collect();
    found.sort_unstable();
    assert_eq!(found, ids);
    assert!(sql.users(&[]).await.unwrap().is_empty());
    assert!(sql.user(1_000_000).await.unwrap().is_none());
    assert_eq!(sql.user(ids[3]).await.unwrap().unwrap().name, "user3");
}

fn session(id: &str, user: u64, expires_at_ms: i64) -> Session {
    Session {
        session_id: id.to_owned(),
        user_id: user,
        device_id: "phone-1".to_owned(),
        created_at_ms: 1_000,
        expires_at_ms,
        revoked_at_ms: None,
    }
}

async fn sessions_are_revoked(sql: Sql) {
    let ada = create(&sql, "ada").await;
    let bob = create(&sql, "bob").await;
    let far = i64::MAX / 2;
    sql.create_session(session("s1", ada, far)).await.unwrap();
    sql.create_session(session("s2", ada, far)).await.unwrap();
    sql.create_session(session("s3", ada, 2_000)).await.unwrap();
    sql.create_session(session("b1", bob, far)).await.unwrap();
    let err = sql
        .create_session(session("s1", bob, far))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict("session")), "{err:?}");

    let s1 = sql.session("s1").await.unwrap().unwrap();
    assert_eq!(s1, session("s1", ada, far));
    assert!(s1.is_active(5_000));
    assert!(!sql.session("s3").await.unwrap().unwrap().is_active(5_000));
    assert!(sql.session("nope").await.unwrap().is_none());

    // Someone else's session is not theirs to revoke.
    assert!(!sql.revoke_session(bob, "s1", 10).await.unwrap());
    assert!(
        sql.session("s1")
            .await
            .unwrap()
            .unwrap()
            .revoked_at_ms
            .is_none()
    );
    assert!(sql.revoke_session(ada, "s1", 10).await.unwrap());
    // Revoking again is fine and keeps the first time.
    assert!(sql.revoke_session(ada, "s1", 20).await.unwrap());
    let s1 = sql.session("s1").await.unwrap().unwrap();
    assert_eq!(s1.revoked_at_ms, Some(10));
    assert!(!s1.is_active(5_000));
    assert!(!sql.revoke_session(ada, "nope", 10).await.unwrap());

    // A batch look-up finds the sessions that exist, revoked or not, and skips the rest.
    let asked: Vec<String> = ["s1", "s2", "nope", "b1"].map(String::from).to_vec();
    let mut found: Vec<(String, bool)> = sql
        .sessions(&asked)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.session_id.clone(), s.is_active(5_000)))
        .collect();
    found.sort();
    assert_eq!(
        found,
        [
            ("b1".into(), true),
            ("s1".into(), false),
            ("s2".into(), true)
        ]
    );
    assert!(sql.sessions(&[]).await.unwrap().is_empty());

    // Only ada's still active session (s2) remains to revoke; bob's is untouched.
    assert_eq!(sql.revoke_sessions(ada, 5_000).await.unwrap(), 1);
    assert_eq!(
        sql.session("s2").await.unwrap().unwrap().revoked_at_ms,
        Some(5_000)
    );
    assert!(sql.session("b1").await.unwrap().unwrap().is_active(5_000));
}

fn state(request: &im_common::proto::FriendRequest) -> FriendRequestState {
    FriendRequestState::try_from(request.state).unwrap()
}

async fn friend_requests_are_settled_once(sql: Sql) {
    let (a, b, c) = (
        create(&sql, "ada").await,
        create(&sql, "bob").await,
        create(&sql, "cy").await,
    );
    let note = "hi, it's me 🦀 '; DROP TABLE friends; --\0";
    let first = sql.create_friend_request(a, b, note).await.unwrap();
    assert_eq!(state(&first), FriendRequestState::Pending);
    assert_eq!((first.from_user_id, first.to_user_id), (a, b));
    assert_eq!(first.message, note);
    // A repeated request is the same one.
    let again = sql.create_friend_request(a, b, "other text").await.unwrap();
    assert_eq!(again, first);
    assert_eq!(
        sql.pending_request(a, b).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(sql.pending_request(b, a).await.unwrap(), None);
    assert_eq!(
        sql.friend_request(first.request_id).await.unwrap(),
        Some(first.clone())
    );
    let incoming = sql
        .friend_requests(b, Direction::Incoming, 10)
        .await
        .unwrap();
    let outgoing = sql
        .friend_requests(a, Direction::Outgoing, 10)
        .await
        .unwrap();
    assert_eq!(
        (incoming, outgoing),
        (vec![first.clone()], vec![first.clone()])
    );
    assert!(
        sql.friend_requests(a, Direction::Incoming, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Rejected: no friendship, and the request cannot be answered again.
    let rejected = sql
        .settle_friend_request(first.request_id, false)
        .await
        .unwrap();
    assert_eq!(state(&rejected), FriendRequestState::Rejected);
    assert!(!sql.are_friends(a, b).await.unwrap());
    for accept in [true, false] {
        let err = sql
            .settle_friend_request(first.request_id, accept)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Precondition(why) if why == "friend request already rejected"),
            "{err:?}"
        );
    }
    assert!(matches!(
        sql.settle_friend_request(999_999, true).await.unwrap_err(),
        StoreError::NotFound("friend request")
    ));

    // Accepted: friends both ways, in one step.
    let second = sql.create_friend_request(a, b, "").await.unwrap();
    assert_ne!(second.request_id, first.request_id);
    let accepted = sql
        .settle_friend_request(second.request_id, true)
        .await
        .unwrap();
    assert_eq!(state(&accepted), FriendRequestState::Accepted);
    assert!(sql.are_friends(a, b).await.unwrap() && sql.are_friends(b, a).await.unwrap());
    assert_eq!(sql.list_friends(a).await.unwrap(), vec![b]);
    assert_eq!(sql.list_friends(b).await.unwrap(), vec![a]);
    assert!(
        sql.settle_friend_request(second.request_id, true)
            .await
            .is_err()
    );
    let listed = sql
        .friend_requests(b, Direction::Incoming, 10)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|r| r.request_id).collect::<Vec<_>>(),
        vec![second.request_id, first.request_id],
        "newest first"
    );
    assert_eq!(
        sql.friend_requests(b, Direction::Incoming, 1)
            .await
            .unwrap()
            .len(),
        1
    );

    // Requests crossing each other: accepting one settles both.
    let c_to_a = sql.create_friend_request(c, a, "").await.unwrap();
    let a_to_c = sql.create_friend_request(a, c, "").await.unwrap();
    sql.settle_friend_request(c_to_a.request_id, true)
        .await
        .unwrap();
    let other = sql
        .friend_request(a_to_c.request_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state(&other), FriendRequestState::Accepted);
    assert_eq!(sql.list_friends(a).await.unwrap(), vec![b, c]);

    // Removing ends both directions.
    assert!(sql.remove_friend(b, a).await.unwrap());
    assert!(!sql.are_friends(a, b).await.unwrap() && !sql.are_friends(b, a).await.unwrap());
    assert!(!sql.remove_friend(a, b).await.unwrap());
    assert_eq!(sql.list_friends(a).await.unwrap(), vec![c]);
}

async fn blocking_ends_friendship_and_requests(sql: Sql) {
    let (a, b, c) = (
        create(&sql, "ada").await,
        create(&sql, "bob").await,
        create(&sql, "cy").await,
    );
    let request = sql.create_friend_request(a, b, "").await.unwrap();
    sql.settle_friend_request(request.request_id, true)
        .await
        .unwrap();
    let pending = sql.create_friend_request(c, a, "").await.unwrap();

    sql.block(a, b).await.unwrap();
    assert!(!sql.are_friends(a, b).await.unwrap() && !sql.are_friends(b, a).await.unwrap());
    assert!(sql.is_blocked(a, b).await.unwrap());
    assert!(!sql.is_blocked(b, a).await.unwrap());
    sql.block(a, b).await.unwrap();
    assert_eq!(sql.list_blocked(a).await.unwrap(), vec![b]);

    // Blocking rejects what was pending between the two.
    sql.block(a, c).await.unwrap();
    let settled = sql
        .friend_request(pending.request_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state(&settled), FriendRequestState::Rejected);
    assert_eq!(sql.list_blocked(a).await.unwrap(), vec![b, c]);
    assert!(sql.list_blocked(b).await.unwrap().is_empty());

    assert!(sql.unblock(a, b).await.unwrap());
    assert!(!sql.unblock(a, b).await.unwrap());
    assert!(!sql.is_blocked(a, b).await.unwrap());
    assert_eq!(sql.list_blocked(a).await.unwrap(), vec![c]);
    // Unblocking does not bring the friendship back.
    assert!(!sql.are_friends(a, b).await.unwrap());
}

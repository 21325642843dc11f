//! Profiles, friends and blocks on SQLite and MariaDB: the friend flow with reject and
//! block, profile text kept byte for byte, no impersonation through the body, batches and
//! search.

mod support;

use im_common::on_both;

use im_common::bus::{Bus, keys};
use im_common::proto::{
    Empty, FriendRequest, FriendRequestState, GetProfilesRequest, ListFriendRequestsRequest,
    RespondFriendRequestRequest, SearchUserRequest, SendFriendRequestRequest, UpdateProfileRequest,
    UserId, UserIds, UserServiceClient,
};
use im_common::store::Sql;
use mprpc::Code;
use prost::Message as _;
use support::*;

on_both!(friend_flow_with_reject_and_block);
on_both!(profiles_change_only_for_their_owner);
on_both!(batches_and_search);

pub async fn ask(
    client: &UserServiceClient,
    from: u64,
    to: u64,
) -> Result<FriendRequest, mprpc::Error> {
    let request = SendFriendRequestRequest {
        to_user_id: to,
        message: "hi! it's me 🦀".to_owned(),
    };
    client
        .send_friend_request_with(&request, &as_user(from))
        .await
}

pub async fn answer(
    client: &UserServiceClient,
    by: u64,
    request: u64,
    accept: bool,
) -> Result<FriendRequest, mprpc::Error> {
    let request = RespondFriendRequestRequest {
        request_id: request,
        accept,
    };
    client
        .respond_friend_request_with(&request, &as_user(by))
        .await
}

pub async fn friends(client: &UserServiceClient, of: u64) -> Vec<u64> {
    let profiles = client
        .list_friends_with(&Empty {}, &as_user(of))
        .await
        .unwrap();
    profiles.profiles.iter().map(|p| p.user_id).collect()
}

pub async fn blocked(client: &UserServiceClient, by: u64) -> Vec<u64> {
    client
        .list_blocked_with(&Empty {}, &as_user(by))
        .await
        .unwrap()
        .user_ids
}

async fn requests(client: &UserServiceClient, of: u64, outgoing: bool) -> Vec<FriendRequest> {
    client
        .list_friend_requests_with(&ListFriendRequestsRequest { outgoing }, &as_user(of))
        .await
        .unwrap()
        .requests
}

/// Makes `a` and `b` friends.
async fn befriend(client: &UserServiceClient, a: u64, b: u64) {
    let request = ask(client, a, b).await.unwrap();
    answer(client, b, request.request_id, true).await.unwrap();
}

fn state(request: &FriendRequest) -> FriendRequestState {
    FriendRequestState::try_from(request.state).unwrap()
}

async fn friend_flow_with_reject_and_block(sql: Sql) {
    let bus = Bus::in_process();
    let (_server, client) = service(&sql, &bus, auth());
    let ada = register(&client, "ada").await;
    let bob = register(&client, "bob").await;
    let cy = register(&client, "cyd").await;

    assert_eq!(
        failure(ask(&client, ada, ada).await).0,
        Code::InvalidArgument
    );
    assert_eq!(failure(ask(&client, ada, 0).await).0, Code::InvalidArgument);
    assert_eq!(failure(ask(&client, ada, 999_999).await).0, Code::NotFound);

    // Asked twice: one request.
    let first = ask(&client, ada, bob).await.unwrap();
    assert_eq!(state(&first), FriendRequestState::Pending);
    assert_eq!((first.from_user_id, first.to_user_id), (ada, bob));
    assert_eq!(ask(&client, ada, bob).await.unwrap(), first);
    assert_eq!(requests(&client, bob, false).await, vec![first.clone()]);
    assert_eq!(requests(&client, ada, true).await, vec![first.clone()]);
    assert!(requests(&client, ada, false).await.is_empty());

    // Only the recipient answers.
    let denied = failure(answer(&client, ada, first.request_id, true).await);
    assert_eq!(denied.0, Code::PermissionDenied);
    let rejected = answer(&client, bob, first.request_id, false).await.unwrap();
    assert_eq!(state(&rejected), FriendRequestState::Rejected);
    assert_eq!(
        answer(&client, bob, first.request_id, false).await.unwrap(),
        rejected
    );
    let settled = failure(answer(&client, bob, first.request_id, true).await);
    assert_eq!(
        settled,
        (
            Code::FailedPrecondition,
            "friend request already rejected".to_owned()
        )
    );
    assert!(friends(&client, ada).await.is_empty() && friends(&client, bob).await.is_empty());
    assert_eq!(
        failure(answer(&client, bob, 999_999, true).await).0,
        Code::NotFound
    );

    // Asking back accepts the pending request.
    let second = ask(&client, ada, bob).await.unwrap();
    assert_ne!(second.request_id, first.request_id);
    let accepted = ask(&client, bob, ada).await.unwrap();
    assert_eq!(accepted.request_id, second.request_id);
    assert_eq!(state(&accepted), FriendRequestState::Accepted);
    assert_eq!(friends(&client, ada).await, vec![bob]);
    assert_eq!(friends(&client, bob).await, vec![ada]);
    // The list other services read is cached as UserIds.
    let cached = bus.cache.get(keys::friends(ada)).await.unwrap().unwrap();
    assert_eq!(UserIds::decode(cached).unwrap().user_ids, vec![bob]);
    assert_eq!(failure(ask(&client, ada, bob).await).0, Code::AlreadyExists);

    // Removing a friend clears both cached lists.
    client
        .remove_friend_with(&UserId { user_id: bob }, &as_user(ada))
        .await
        .unwrap();
    assert!(bus.cache.get(keys::friends(ada)).await.unwrap().is_none());
    assert!(friends(&client, ada).await.is_empty() && friends(&client, bob).await.is_empty());

    // Blocking rejects what was pending and refuses new requests either way.
    let from_cy = ask(&client, cy, ada).await.unwrap();
    client
        .block_with(&UserId { user_id: cy }, &as_user(ada))
        .await
        .unwrap();
    let listed = requests(&client, ada, false).await;
    let settled = listed
        .iter()
        .find(|r| r.request_id == from_cy.request_id)
        .unwrap();
    assert_eq!(state(settled), FriendRequestState::Rejected);
    assert_eq!(
        failure(ask(&client, cy, ada).await).0,
        Code::PermissionDenied
    );
    assert_eq!(
        failure(ask(&client, ada, cy).await).0,
        Code::PermissionDenied
    );
    assert_eq!(blocked(&client, ada).await, vec![cy]);
    assert!(blocked(&client, cy).await.is_empty());
    let myself = failure(
        client
            .block_with(&UserId { user_id: ada }, &as_user(ada))
            .await,
    );
    assert_eq!(myself.0, Code::InvalidArgument);
    let nobody = failure(
        client
            .block_with(&UserId { user_id: 999_999 }, &as_user(ada))
            .await,
    );
    assert_eq!(nobody.0, Code::NotFound);

    // Blocking a friend ends the friendship for both.
    let request = ask(&client, bob, ada).await.unwrap();
    answer(&client, ada, request.request_id, true)
        .await
        .unwrap();
    assert_eq!(friends(&client, bob).await, vec![ada]);
    client
        .block_with(&UserId { user_id: ada }, &as_user(bob))
        .await
        .unwrap();
    assert!(friends(&client, ada).await.is_empty() && friends(&client, bob).await.is_empty());
    assert_eq!(blocked(&client, bob).await, vec![ada]);

    // Unblocking allows requests again, but brings nothing back by itself.
    for (by, target) in [(ada, cy), (bob, ada)] {
        client
            .unblock_with(&UserId { user_id: target }, &as_user(by))
            .await
            .unwrap();
    }
    assert!(blocked(&client, ada).await.is_empty() && blocked(&client, bob).await.is_empty());
    assert!(friends(&client, ada).await.is_empty());
    assert_eq!(
        state(&ask(&client, cy, ada).await.unwrap()),
        FriendRequestState::Pending
    );
}

async fn profiles_change_only_for_their_owner(sql: Sql) {
    let (_server, client) = service(&sql, &Bus::in_process(), auth());
    let ada = register(&client, "ada").await;
    let bob = register(&client, "bob").await;
    befriend(&client, ada, bob).await;
    let bob_before = client
        .get_profile_with(&UserId { user_id: bob }, &as_user(ada))
        .await
        .unwrap();

    let bio = format!("nul\0byte, emoji 👩‍👩‍👧, {}", "é🦀x\0".repeat(500));
    let update = UpdateProfileRequest {
        nickname: Some("'; DROP TABLE users; --".to_owned()),
        avatar: Some("https://example.org/a'\"b.png".to_owned()),
        bio: Some(bio.clone()),
    };
    let updated = client
        .update_profile_with(&update, &as_user(ada))
        .await
        .unwrap();
    assert_eq!(updated.user_id, ada);
    // Read by someone else, after the cache was filled before the update.
    let read = client
        .get_profile_with(&UserId { user_id: ada }, &as_user(bob))
        .await
        .unwrap();
    assert_eq!(read, updated);
    assert_eq!(read.nickname, "'; DROP TABLE users; --");
    assert_eq!(read.bio.as_bytes(), bio.as_bytes());
    assert_eq!(read.name, "ada");
    let bob_after = client
        .get_profile_with(&UserId { user_id: bob }, &as_user(ada))
        .await
        .unwrap();
    assert_eq!(bob_after, bob_before, "only the caller's profile changes");

    // Fields left out stay.
    let only_bio = UpdateProfileRequest {
        bio: Some(String::new()),
        ..Default::default()
    };
    let updated = client
        .update_profile_with(&only_bio, &as_user(ada))
        .await
        .unwrap();
    assert_eq!(
        (updated.nickname.as_str(), updated.bio.as_str()),
        ("'; DROP TABLE users; --", "")
    );

    let limits = [
        (
            UpdateProfileRequest {
                nickname: Some(" ".into()),
                ..Default::default()
            },
            "nickname must not be empty or only white space".to_owned(),
        ),
        (
            UpdateProfileRequest {
                nickname: Some("n".repeat(129)),
                ..Default::default()
            },
            "nickname is 129 bytes, more than the limit of 128".to_owned(),
        ),
        (
            UpdateProfileRequest {
                avatar: Some("a".repeat(1025)),
                ..Default::default()
            },
            "avatar is 1025 bytes, more than the limit of 1024".to_owned(),
        ),
        (
            UpdateProfileRequest {
                bio: Some("b".repeat(4097)),
                ..Default::default()
            },
            "bio is 4097 bytes, more than the limit of 4096".to_owned(),
        ),
    ];
    for (request, message) in limits {
        let refused = failure(client.update_profile_with(&request, &as_user(ada)).await);
        assert_eq!(refused, (Code::InvalidArgument, message));
    }
    let unchanged = client
        .get_profile_with(&UserId { user_id: ada }, &as_user(ada))
        .await
        .unwrap();
    assert_eq!(unchanged, updated);
}

async fn batches_and_search(sql: Sql) {
    let (_server, client) = service(&sql, &Bus::in_process(), auth());
    let ada = register(&client, "ada").await;
    let bob = register(&client, "bob").await;
    let cy = register(&client, "cyd").await;
    befriend(&client, ada, bob).await;

    // Cy is a stranger to Ada: by id, Cy looks like no user at all (by exact name, Cy is
    // found).
    let hidden = failure(
        client
            .get_profile_with(&UserId { user_id: cy }, &as_user(ada))
            .await,
    );
    assert_eq!(hidden, (Code::NotFound, "user not found".to_owned()));
    let request = GetProfilesRequest {
        user_ids: vec![cy, bob],
    };
    let found = client
        .get_profiles_with(&request, &as_user(ada))
        .await
        .unwrap();
    let ids: Vec<u64> = found.profiles.iter().map(|p| p.user_id).collect();
    assert_eq!(ids, [bob]);

    let request = GetProfilesRequest {
        user_ids: vec![bob, 999_999, ada, bob, 0],
    };
    let found = client
        .get_profiles_with(&request, &as_user(ada))
        .await
        .unwrap();
    let ids: Vec<u64> = found.profiles.iter().map(|p| p.user_id).collect();
    assert_eq!(
        ids,
        vec![bob, ada],
        "in the order asked, unknown skipped, once each"
    );
    let too_many = GetProfilesRequest {
        user_ids: (1..=501).collect(),
    };
    let refused = failure(client.get_profiles_with(&too_many, &as_user(ada)).await);
    assert_eq!(refused.0, Code::InvalidArgument);
    let most = GetProfilesRequest {
        user_ids: (1..=500).collect(),
    };
    assert_eq!(
        client
            .get_profiles_with(&most, &as_user(ada))
            .await
            .unwrap()
            .profiles
            .len(),
        2
    );
    let missing = failure(
        client
            .get_profile_with(&UserId { user_id: 999_999 }, &as_user(ada))
            .await,
    );
    assert_eq!(missing, (Code::NotFound, "user not found".to_owned()));

    for (name, expected) in [
        ("bob", vec![bob]),
        ("Bob", vec![]),
        ("nobody", vec![]),
        ("' OR '1'='1", vec![]),
        ("", vec![]),
    ] {
        let found = client
            .search_user_with(&SearchUserRequest { name: name.into() }, &as_user(ada))
            .await
            .unwrap();
        let ids: Vec<u64> = found.profiles.iter().map(|p| p.user_id).collect();
        assert_eq!(ids, expected, "search {name:?}");
    }
}

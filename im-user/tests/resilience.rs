//! The service without its cache (flushed, holding garbage, or failing on every call), and
//! over a real socket.

mod support;

use im_common::on_both;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use im_common::bus::testing::DownCache;
use im_common::bus::{Bus, keys};
use im_common::identity::ServiceIdentity;
use im_common::proto::{
    Empty, LogoutRequest, RespondFriendRequestRequest, SendFriendRequestRequest,
    UpdateProfileRequest, UserId, UserServiceClient, VerifyTokenRequest,
};
use im_common::store::Sql;
use mprpc::Code;
use support::*;

on_both!(a_flushed_cache_changes_nothing);
on_both!(a_failing_cache_only_costs_reads);

async fn verify(client: &UserServiceClient, token: &str) -> Result<u64, mprpc::Error> {
    let request = VerifyTokenRequest {
        token: token.to_owned(),
    };
    Ok(client.verify_token(&request).await?.user_id)
}

async fn nickname(client: &UserServiceClient, of: u64) -> String {
    client
        .get_profile_with(&UserId { user_id: of }, &as_user(of))
        .await
        .unwrap()
        .nickname
}

async fn friend_ids(client: &UserServiceClient, of: u64) -> Vec<u64> {
    let profiles = client
        .list_friends_with(&Empty {}, &as_user(of))
        .await
        .unwrap();
    profiles.profiles.iter().map(|p| p.user_id).collect()
}

async fn befriend(client: &UserServiceClient, a: u64, b: u64) {
    let request = SendFriendRequestRequest {
        to_user_id: b,
        message: String::new(),
    };
    let sent = client
        .send_friend_request_with(&request, &as_user(a))
        .await
        .unwrap();
    let answer = RespondFriendRequestRequest {
        request_id: sent.request_id,
        accept: true,
    };
    client
        .respond_friend_request_with(&answer, &as_user(b))
        .await
        .unwrap();
}

fn rename(to: &str) -> UpdateProfileRequest {
    UpdateProfileRequest {
        nickname: Some(to.to_owned()),
        ..Default::default()
    }
}

async fn a_flushed_cache_changes_nothing(sql: Sql) {
    let bus = Bus::in_process();
    let (_server, client) = service(&sql, &bus, auth());
    let ada = register(&client, "ada").await;
    let bob = register(&client, "bob").await;
    befriend(&client, ada, bob).await;
    let session = login(&client, "ada", PASSWORD, "phone").await.unwrap();
    // Everything read once, so everything is cached.
    assert_eq!(verify(&client, &session.token).await.unwrap(), ada);
    assert_eq!(nickname(&client, ada).await, "ada");
    assert_eq!(friend_ids(&client, ada).await, vec![bob]);
    let every_key = vec![
        keys::profile(ada),
        keys::profile(bob),
        keys::friends(ada),
        keys::friends(bob),
        keys::blocked(ada),
        keys::session(&session.session_id),
    ];
    assert!(bus.cache.get(keys::profile(ada)).await.unwrap().is_some());
    assert!(
        bus.cache
            .get(keys::session(&session.session_id))
            .await
            .unwrap()
            .is_some()
    );

    bus.cache.delete(every_key.clone()).await.unwrap();
    assert_eq!(verify(&client, &session.token).await.unwrap(), ada);
    assert_eq!(nickname(&client, ada).await, "ada");
    assert_eq!(friend_ids(&client, ada).await, vec![bob]);

    // Written while the entries were cached, read after a flush: the new values.
    client
        .update_profile_with(&rename("Ada L."), &as_user(ada))
        .await
        .unwrap();
    assert_eq!(nickname(&client, ada).await, "Ada L.");
    bus.cache.delete(every_key.clone()).await.unwrap();
    assert_eq!(nickname(&client, ada).await, "Ada L.");

    // Garbage in the cache is not believed.
    for key in [keys::profile(ada), keys::session(&session.session_id)] {
        bus.cache
            .set(
                key,
                Bytes::from_static(b"\xff garbage"),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
    }
    assert_eq!(nickname(&client, ada).await, "Ada L.");
    assert_eq!(verify(&client, &session.token).await.unwrap(), ada);

    // A logout after a flush still revokes.
    bus.cache.delete(every_key).await.unwrap();
    client
        .logout_with(
            &LogoutRequest {
                token: session.token.clone(),
            },
            &as_user(ada),
        )
        .await
        .unwrap();
    assert_eq!(
        failure(verify(&client, &session.token).await).0,
        Code::Unauthenticated
    );
}

async fn a_failing_cache_only_costs_reads(sql: Sql) {
    let mut bus = Bus::in_process();
    bus.cache = Arc::new(DownCache);
    let (_server, client) = service(&sql, &bus, auth());
    let ada = register(&client, "ada").await;
    let bob = register(&client, "bob").await;
    befriend(&client, ada, bob).await;
    assert_eq!(friend_ids(&client, ada).await, vec![bob]);
    assert_eq!(friend_ids(&client, bob).await, vec![ada]);

    let session = login(&client, "ada", PASSWORD, "").await.unwrap();
    assert_eq!(verify(&client, &session.token).await.unwrap(), ada);
    client
        .update_profile_with(&rename("Ada L."), &as_user(ada))
        .await
        .unwrap();
    assert_eq!(nickname(&client, ada).await, "Ada L.");
    client
        .block_with(&UserId { user_id: bob }, &as_user(ada))
        .await
        .unwrap();
    assert!(friend_ids(&client, ada).await.is_empty());
    let blocked = client
        .list_blocked_with(&Empty {}, &as_user(ada))
        .await
        .unwrap();
    assert_eq!(blocked.user_ids, vec![bob]);

    client
        .logout_with(
            &LogoutRequest {
                token: session.token.clone(),
            },
            &as_user(ada),
        )
        .await
        .unwrap();
    let revoked = failure(verify(&client, &session.token).await);
    assert_eq!(
        revoked,
        (Code::Unauthenticated, "session revoked".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_over_tcp() {
    let db = im_common::store::testing::TestDb::sqlite();
    let sql = Sql::connect(&db.config()).await.unwrap();
    let users = im_user::Users::new(sql.clone(), Bus::in_process(), auth()).unwrap();
    let server = im_user::server(users);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
    });

    let client = UserServiceClient::new(
        mprpc::Client::builder()
            .intercept(ServiceIdentity::new("gateway"))
            .connect_lazy(addr.to_string()),
    );
    let ada = register(&client, "ada").await;
    let session = login(&client, "ada", PASSWORD, "tcp").await.unwrap();
    assert_eq!(verify(&client, &session.token).await.unwrap(), ada);
    let wrong = failure(login(&client, "ada", "wrong password", "tcp").await);
    assert_eq!(wrong.0, Code::Unauthenticated);

    let anonymous = UserServiceClient::new(mprpc::Client::connect_lazy(addr.to_string()));
    assert_eq!(
        failure(verify(&anonymous, &session.token).await).0,
        Code::Unauthenticated
    );

    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
    sql.close().await;
    db.drop().await.unwrap();
}

//! Accounts on SQLite and MariaDB: register, login, tokens, sessions, logout, the
//! development secret, and calls without identity.

mod support;

use im_common::on_both;

use std::time::Duration;

use im_common::bus::{Bus, channels};
use im_common::ids::now_ms;
use im_common::proto::{
    Empty, Event, GetProfilesRequest, LogoutRequest, RegisterRequest, Route,
    SendFriendRequestRequest, UpdateProfileRequest, UserId, UserServiceClient, VerifyTokenRequest,
    event,
};
use im_common::store::Sql;
use im_common::store::users::UserStore;
use im_user::auth::Claims;
use im_user::{AuthSettings, Users};
use mprpc::{CallOptions, Code};
use prost::Message as _;
use support::*;

on_both!(register_and_login);
on_both!(invalid_input_is_named);
on_both!(expired_and_forged_tokens_are_refused);
on_both!(logout_revokes_at_once);
on_both!(calls_without_identity_are_refused);

fn registration(name: &str, password: &str, nickname: &str) -> RegisterRequest {
    RegisterRequest {
        name: name.to_owned(),
        password: password.to_owned(),
        nickname: nickname.to_owned(),
    }
}

async fn verify(
    client: &UserServiceClient,
    token: &str,
) -> Result<(u64, String, String), mprpc::Error> {
    let reply = client
        .verify_token(&VerifyTokenRequest {
            token: token.to_owned(),
        })
        .await?;
    Ok((reply.user_id, reply.session_id, reply.device_id))
}

async fn register_and_login(sql: Sql) {
    let (_server, client) = service(&sql, &Bus::in_process(), auth());
    let ada = client
        .register(&registration("ada", PASSWORD, ""))
        .await
        .unwrap();
    assert_eq!((ada.name.as_str(), ada.nickname.as_str()), ("ada", "ada"));
    let bob = client
        .register(&registration("bob", PASSWORD, "Bob 🦀 'the builder'"))
        .await
        .unwrap();
    assert_eq!(bob.nickname, "Bob 🦀 'the builder'");
    assert_ne!(ada.user_id, bob.user_id);

    // Only an argon2id hash is stored.
    let stored = sql.credentials("ada").await.unwrap().unwrap().password_hash;
    assert!(
        stored.starts_with("$argon2id$v=19$m=256,t=1,p=1$"),
        "{stored}"
    );
    assert!(!stored.contains(PASSWORD));

    let before = now_ms();
    let reply = login(&client, "ada", PASSWORD, "phone").await.unwrap();
    assert_eq!(reply.profile.as_ref(), Some(&ada));
    assert_eq!(reply.session_id.len(), 32);
    let week = 7 * 24 * 3600 * 1000;
    assert!(
        (before + week..=now_ms() + week + 1000).contains(&reply.expires_at_ms),
        "expires at {}",
        reply.expires_at_ms
    );
    let verified = client
        .verify_token(&VerifyTokenRequest {
            token: reply.token.clone(),
        })
        .await
        .unwrap();
    assert_eq!(verified.user_id, ada.user_id);
    assert_eq!(verified.session_id, reply.session_id);
    assert_eq!(verified.device_id, "phone");
    assert_eq!(verified.expires_at_ms, reply.expires_at_ms);

    // A second login is a second session; no device id means "default".
    let other = login(&client, "ada", PASSWORD, "").await.unwrap();
    assert_ne!(other.session_id, reply.session_id);
    let (_, _, device) = verify(&client, &other.token).await.unwrap();
    assert_eq!(device, "default");

    // A wrong password and an unknown name look the same.
    let wrong_password = failure(login(&client, "ada", "not the password", "phone").await);
    let unknown_name = failure(login(&client, "nobody", PASSWORD, "phone").await);
    let too_long = failure(login(&client, "ada", &"x".repeat(129), "phone").await);
    let expected = (Code::Unauthenticated, "wrong name or password".to_owned());
    assert_eq!(wrong_password, expected);
    assert_eq!(unknown_name, expected);
    assert_eq!(too_long, expected);

    let taken = failure(client.register(&registration("ada", PASSWORD, "")).await);
    assert_eq!(
        taken,
        (Code::AlreadyExists, "user name already exists".to_owned())
    );
}

async fn invalid_input_is_named(sql: Sql) {
    let (_server, client) = service(&sql, &Bus::in_process(), auth());
    for name in [
        "",
        "ab",
        "has space",
        "'; DROP TABLE users; --",
        "nul\0",
        &"a".repeat(33),
    ] {
        let (code, message) = failure(client.register(&registration(name, PASSWORD, "")).await);
        assert_eq!(code, Code::InvalidArgument, "{name:?}");
        assert_eq!(
            message,
            "name must be 3 to 32 characters of A-Z, a-z, 0-9, '_', '.', '-'"
        );
    }
    for password in ["", "short", &"p".repeat(129)] {
        let refused = failure(client.register(&registration("ada", password, "")).await);
        assert_eq!(
            refused,
            (
                Code::InvalidArgument,
                "password must be 8 to 128 bytes".to_owned()
            )
        );
    }
    let refused = failure(
        client
            .register(&registration("ada", PASSWORD, &"é".repeat(65)))
            .await,
    );
    assert_eq!(
        refused,
        (
            Code::InvalidArgument,
            "nickname is 130 bytes, more than the limit of 128".to_owned()
        )
    );
    assert!(sql.credentials("ada").await.unwrap().is_none());

    register(&client, "ada").await;
    for device in ["has space", &"d".repeat(65), "tab\t"] {
        let (code, message) = failure(login(&client, "ada", PASSWORD, device).await);
        assert_eq!(code, Code::InvalidArgument);
        assert_eq!(
            message,
            "device_id must be 1 to 64 printable ASCII characters"
        );
    }
}

/// A token signed with `secret`, for `user`'s `session`, expiring at `exp` (seconds).
fn forge(secret: &str, user: u64, session: &str, exp: i64) -> String {
    let claims = Claims {
        sub: user.to_string(),
        sid: session.to_owned(),
        dev: "phone".to_owned(),
        iat: exp - 3600,
        exp,
    };
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

async fn expired_and_forged_tokens_are_refused(sql: Sql) {
    let short = AuthSettings {
        token_ttl_secs: 1,
        ..auth()
    };
    let (_server, client) = service(&sql, &Bus::in_process(), short);
    let ada = register(&client, "ada").await;
    let before = now_ms();
    let reply = login(&client, "ada", PASSWORD, "phone").await.unwrap();
    // A one-second token: it lives at least one second and less than two.
    assert!(
        (before + 1000..now_ms() + 2000).contains(&reply.expires_at_ms),
        "expires at {} after a login at {before}",
        reply.expires_at_ms
    );

    // Well signed, for a live session, but past its expiry.
    let now_s = now_ms() / 1000;
    let expired = forge(SECRET, ada, &reply.session_id, now_s - 1);
    let refused = failure(verify(&client, &expired).await);
    assert_eq!(refused, (Code::Unauthenticated, "token expired".to_owned()));

    // The same claims, unexpired, pass: the expiry alone refused it.
    let fresh = forge(SECRET, ada, &reply.session_id, now_s + 3600);
    assert_eq!(verify(&client, &fresh).await.unwrap().0, ada);

    let invalid = (Code::Unauthenticated, "invalid token".to_owned());
    let other_key = forge(
        "another-secret-of-thirty-two-bytes!!",
        ada,
        &reply.session_id,
        now_s + 3600,
    );
    assert_eq!(failure(verify(&client, &other_key).await), invalid);
    assert_eq!(failure(verify(&client, "").await), invalid);
    assert_eq!(failure(verify(&client, "a.b.c").await), invalid);
    // A signed token naming another user's session.
    let bob = register(&client, "bob").await;
    let mismatched = forge(SECRET, bob, &reply.session_id, now_s + 3600);
    assert_eq!(failure(verify(&client, &mismatched).await), invalid);
    let unknown = forge(SECRET, ada, "no-such-session", now_s + 3600);
    assert_eq!(
        failure(verify(&client, &unknown).await),
        (Code::Unauthenticated, "unknown session".to_owned())
    );
}

async fn logout_revokes_at_once(sql: Sql) {
    let bus = Bus::in_process();
    let (_server, client) = service(&sql, &bus, auth());
    let ada = register(&client, "ada").await;
    let bob = register(&client, "bob").await;
    let phone = login(&client, "ada", PASSWORD, "phone").await.unwrap();
    let laptop = login(&client, "ada", PASSWORD, "laptop").await.unwrap();
    let bobs = login(&client, "bob", PASSWORD, "phone").await.unwrap();
    // Verified once, so their state is cached.
    for token in [&phone.token, &laptop.token, &bobs.token] {
        verify(&client, token).await.unwrap();
    }
    // The gateway holding ada's phone hears the kick on its own channel.
    let route = Route {
        user_id: ada,
        device_id: "phone".into(),
        device_kind: 0,
        gateway_id: "gw-1".into(),
    };
    bus.routes
        .bind(route, Duration::from_secs(30))
        .await
        .unwrap();
    let mut events = bus
        .pubsub
        .subscribe(channels::gateway("gw-1"))
        .await
        .unwrap();

    // Someone else's token is not the caller's to revoke.
    let denied = failure(
        client
            .logout_with(
                &LogoutRequest {
                    token: bobs.token.clone(),
                },
                &as_user(ada),
            )
            .await,
    );
    assert_eq!(denied.0, Code::PermissionDenied);
    verify(&client, &bobs.token).await.unwrap();

    client
        .logout_with(
            &LogoutRequest {
                token: phone.token.clone(),
            },
            &as_user(ada),
        )
        .await
        .unwrap();
    let revoked = (Code::Unauthenticated, "session revoked".to_owned());
    assert_eq!(failure(verify(&client, &phone.token).await), revoked);
    // A verification that read the session just before the revocation and fills the cache
    // just after it cannot make the session active again.
    let late_fill = bus
        .cache
        .set_if_absent(
            im_common::bus::keys::session(&phone.session_id),
            ada.to_string().into(),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(!late_fill, "the revocation holds the session's cache entry");
    assert_eq!(failure(verify(&client, &phone.token).await), revoked);
    verify(&client, &laptop.token).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("a kick within 10 s")
        .expect("subscription open");
    match Event::decode(event).unwrap().event {
        Some(event::Event::Kick(kick)) => {
            assert_eq!(
                (kick.user_id, kick.session_id.as_str()),
                (ada, phone.session_id.as_str())
            );
            assert_eq!(kick.reason, "logout");
        }
        other => panic!("expected a kick, got {other:?}"),
    }
    // Logging out again is fine.
    client
        .logout_with(
            &LogoutRequest {
                token: phone.token.clone(),
            },
            &as_user(ada),
        )
        .await
        .unwrap();

    // Without a token: the session the call carries.
    let nothing = failure(
        client
            .logout_with(&LogoutRequest::default(), &as_user(ada))
            .await,
    );
    assert_eq!(nothing.0, Code::InvalidArgument);
    let others = failure(
        client
            .logout_with(
                &LogoutRequest::default(),
                &in_session(bob, &laptop.session_id),
            )
            .await,
    );
    assert_eq!(others, (Code::NotFound, "session not found".to_owned()));
    verify(&client, &laptop.token).await.unwrap();
    client
        .logout_with(
            &LogoutRequest::default(),
            &in_session(ada, &laptop.session_id),
        )
        .await
        .unwrap();
    assert_eq!(failure(verify(&client, &laptop.token).await), revoked);
    verify(&client, &bobs.token).await.unwrap();

    // A new login works as before.
    let again = login(&client, "ada", PASSWORD, "phone").await.unwrap();
    assert_eq!(verify(&client, &again.token).await.unwrap().0, ada);
}

async fn calls_without_identity_are_refused(sql: Sql) {
    let (server, client) = service(&sql, &Bus::in_process(), auth());
    let ada = register(&client, "ada").await;

    // No service identity: refused before any handler runs.
    let anonymous = UserServiceClient::new(mprpc::Client::in_process(&server));
    let refused = failure(anonymous.register(&registration("eve", PASSWORD, "")).await);
    assert_eq!(refused.0, Code::Unauthenticated);
    assert_eq!(
        failure(login(&anonymous, "ada", PASSWORD, "").await).0,
        Code::Unauthenticated
    );
    let refused = failure(
        anonymous
            .get_profile_with(&UserId { user_id: ada }, &as_user(ada))
            .await,
    );
    assert_eq!(refused.0, Code::Unauthenticated);
    assert!(sql.credentials("eve").await.unwrap().is_none());

    // A service identity but no user: every user-facing rpc refuses.
    let none = CallOptions::new();
    let expected = (
        Code::Unauthenticated,
        "this call must be made for a logged-in user".to_owned(),
    );
    assert_eq!(
        failure(
            client
                .get_profile_with(&UserId { user_id: ada }, &none)
                .await
        ),
        expected
    );
    let request = GetProfilesRequest {
        user_ids: vec![ada],
    };
    assert_eq!(
        failure(client.get_profiles_with(&request, &none).await),
        expected
    );
    let update = UpdateProfileRequest {
        nickname: Some("hijacked".into()),
        ..Default::default()
    };
    assert_eq!(
        failure(client.update_profile_with(&update, &none).await),
        expected
    );
    let befriend = SendFriendRequestRequest {
        to_user_id: ada,
        message: String::new(),
    };
    assert_eq!(
        failure(client.send_friend_request_with(&befriend, &none).await),
        expected
    );
    assert_eq!(
        failure(client.list_friends_with(&Empty {}, &none).await),
        expected
    );
    assert_eq!(
        failure(client.logout_with(&LogoutRequest::default(), &none).await),
        expected
    );
    assert_eq!(sql.user(ada).await.unwrap().unwrap().nickname, "ada");
}

#[tokio::test]
async fn the_development_secret_is_refused_without_dev() {
    let db = im_common::store::testing::TestDb::sqlite();
    let sql = Sql::connect(&db.config()).await.unwrap();
    let bus = Bus::in_process();
    let dev_secret = AuthSettings::default();
    let err = Users::new(sql.clone(), bus.clone(), dev_secret.clone()).unwrap_err();
    assert!(err.to_string().starts_with("auth.jwt_secret:"), "{err}");
    let allowed = AuthSettings {
        dev: true,
        ..dev_secret
    };
    assert!(Users::new(sql.clone(), bus.clone(), allowed).is_ok());
    let short = AuthSettings {
        jwt_secret: "too short".into(),
        ..AuthSettings::default()
    };
    let err = Users::new(sql.clone(), bus, short).unwrap_err();
    assert_eq!(
        err.to_string(),
        "auth.jwt_secret: 9 bytes, fewer than the 32 required"
    );

    // The process refuses before it connects to anything.
    let run = im_user::run(im_user::Config::default(), std::future::pending());
    let err = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("refused at once")
        .unwrap_err();
    assert!(err.to_string().contains("auth.jwt_secret"), "{err}");
    sql.close().await;
    db.drop().await.unwrap();
}

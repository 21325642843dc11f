//! The client against a scripted gateway: replies matched to requests, reconnect and
//! resume, resend of unacknowledged sends, gaps filled by sync, duplicates dropped, friend
//! request pushes.

mod support;

use std::time::Duration;

use im_client::im_proto::client::request::Command;
use im_client::im_proto::client::server_message::Body;
use im_client::im_proto::client::{Behind, Code, Pong, Resumed};
use im_client::im_proto::{
    FriendRequest, FriendRequestState, Profiles, SendAck, SyncReply, UserProfile,
};
use im_client::{Client, Error, Event};
use support::*;

#[tokio::test]
async fn replies_find_their_requests_in_any_order() {
    let gateway = FakeGateway::start().await;
    let (client, mut events) = Client::connect(gateway.options()).await.unwrap();
    let mut conn = gateway.accept().await;
    assert_eq!(next_event(&mut events).await, Event::Connected);

    let ping = tokio::spawn({
        let client = client.clone();
        async move { client.ping().await }
    });
    let (ping_id, command) = conn.recv().await;
    assert!(matches!(command, Command::Ping(_)));
    let search = tokio::spawn({
        let client = client.clone();
        async move { client.search_user("bob").await }
    });
    let (search_id, command) = conn.recv().await;
    assert!(matches!(command, Command::SearchUser(ref s) if s.name == "bob"));
    assert_ne!(ping_id, search_id);

    let bob = UserProfile {
        user_id: 2,
        name: "bob".into(),
        ..UserProfile::default()
    };
    let profiles = Profiles {
        profiles: vec![bob],
    };
    conn.reply(search_id, Body::Profiles(profiles)).await;
    conn.reply(ping_id, Body::Pong(Pong { server_time_ms: 42 }))
        .await;
    assert_eq!(search.await.unwrap().unwrap().profiles[0].user_id, 2);
    assert_eq!(ping.await.unwrap().unwrap(), 42);

    let add = tokio::spawn({
        let client = client.clone();
        async move { client.add_friend(2, "hi").await }
    });
    let (id, _) = conn.recv().await;
    conn.fail(id, Code::AlreadyExists, "already friends with bob")
        .await;
    let err = add.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(Code::AlreadyExists));
    assert_eq!(err.to_string(), "already friends with bob");
}

#[tokio::test]
async fn a_dropped_connection_is_followed_by_reconnect_and_resume() {
    let gateway = FakeGateway::start().await;
    let (client, mut events) = Client::connect(gateway.options()).await.unwrap();
    let mut conn = gateway.accept().await;
    login(&client, &mut conn, &[("d:1:2", 5)]).await;
    drop(conn);

    let mut conn = gateway.accept().await;
    let (id, command) = conn.recv().await;
    let Command::Resume(resume) = command else {
        panic!("{command:?}")
    };
    assert_eq!(resume.token, "token-1");
    assert_eq!(resume.cursors.len(), 1);
    assert_eq!(
        (
            resume.cursors[0].conversation_id.as_str(),
            resume.cursors[0].last_seq
        ),
        ("d:1:2", 5)
    );
    let resumed = Resumed {
        session: Some(session(1)),
        behind: vec![],
    };
    conn.reply(id, Body::Resumed(resumed)).await;
    assert_eq!(next_event(&mut events).await, Event::Connected);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    assert_eq!(
        next_event(&mut events).await,
        Event::Reconnected { resumed: true }
    );
    assert!(client.state().connected);

    // Calls work on the new connection.
    let ping = tokio::spawn(async move { client.ping().await });
    let (id, _) = conn.recv().await;
    conn.reply(id, Body::Pong(Pong { server_time_ms: 7 })).await;
    assert_eq!(ping.await.unwrap().unwrap(), 7);
}

#[tokio::test]
async fn an_unacknowledged_send_is_resent_after_a_reconnect_and_resolves() {
    let gateway = FakeGateway::start().await;
    let (client, mut events) = Client::connect(gateway.options()).await.unwrap();
    let mut conn = gateway.accept().await;
    login(&client, &mut conn, &[]).await;

    let send = tokio::spawn({
        let client = client.clone();
        async move { client.send(2, "hello").await }
    });
    let (_, command) = conn.recv().await;
    let Command::Send(first) = command else {
        panic!("{command:?}")
    };
    assert_eq!(first.client_msg_id.len(), 32);
    // Other calls in flight fail when the connection goes; the send waits.
    let ping = tokio::spawn({
        let client = client.clone();
        async move { client.ping().await }
    });
    conn.recv().await;
    drop(conn);
    assert!(matches!(ping.await.unwrap(), Err(Error::Disconnected)));

    let mut conn = gateway.accept().await;
    let (id, command) = conn.recv().await;
    assert!(matches!(command, Command::Resume(_)));
    conn.reply(id, Body::Resumed(Resumed::default())).await;
    let (id, command) = conn.recv().await;
    let Command::Send(again) = command else {
        panic!("{command:?}")
    };
    assert_eq!(again, first, "the same request, client_msg_id included");
    let ack = SendAck {
        msg_id: 77,
        seq: 1,
        conversation_id: "d:1:2".into(),
        duplicate: true,
        ..SendAck::default()
    };
    conn.reply(id, Body::Ack(ack.clone())).await;
    assert_eq!(send.await.unwrap().unwrap(), ack);

    let Event::Message(own) = next_entry(&mut events).await else {
        panic!()
    };
    assert_eq!(
        (own.msg_id, own.seq, own.sender_id, own.body.as_str()),
        (77, 1, 1, "hello")
    );
    assert_eq!(own.client_msg_id, first.client_msg_id);
}

#[tokio::test]
async fn resume_syncs_what_was_missed_and_a_pushed_gap_is_filled() {
    let gateway = FakeGateway::start().await;
    let (client, mut events) = Client::connect(gateway.options()).await.unwrap();
    let mut conn = gateway.accept().await;
    login(&client, &mut conn, &[("d:1:2", 3)]).await;
    drop(conn);

    let mut conn = gateway.accept().await;
    let (id, _) = conn.recv().await;
    let behind = Behind {
        conversation_id: "d:1:2".into(),
        after_seq: 3,
        last_seq: 6,
    };
    let resumed = Resumed {
        session: Some(session(1)),
        behind: vec![behind],
    };
    conn.reply(id, Body::Resumed(resumed)).await;
    for (after, seqs, has_more) in [(3, vec![4, 5], true), (5, vec![6], false)] {
        let (id, command) = conn.recv().await;
        let Command::Sync(sync) = command else {
            panic!("{command:?}")
        };
        assert_eq!(
            (sync.conversation_id.as_str(), sync.after_seq),
            ("d:1:2", after)
        );
        let messages = seqs.iter().map(|&s| entry("d:1:2", s, 2)).collect();
        let page = SyncReply {
            messages,
            has_more,
            last_seq: 6,
        };
        conn.reply(id, Body::Synced(page)).await;
    }
    for seq in [4, 5, 6] {
        assert_eq!(seq_of(&next_entry(&mut events).await), seq);
    }

    // A push past a gap waits for the sync of the gap.
    conn.push(Body::Message(entry("d:1:2", 9, 2))).await;
    let (id, command) = conn.recv().await;
    let Command::Sync(sync) = command else {
        panic!("{command:?}")
    };
    assert_eq!(sync.after_seq, 6);
    conn.push(Body::Message(entry("d:1:2", 10, 2))).await;
    let messages = vec![
        entry("d:1:2", 7, 2),
        entry("d:1:2", 8, 2),
        entry("d:1:2", 9, 2),
    ];
    let page = SyncReply {
        messages,
        has_more: false,
        last_seq: 10,
    };
    conn.reply(id, Body::Synced(page)).await;
    for seq in [7, 8, 9, 10] {
        assert_eq!(seq_of(&next_entry(&mut events).await), seq);
    }
}

#[tokio::test]
async fn a_repeated_push_is_shown_once() {
    let gateway = FakeGateway::start().await;
    let (client, mut events) = Client::connect(gateway.options()).await.unwrap();
    let mut conn = gateway.accept().await;
    login(&client, &mut conn, &[]).await;
    for seq in [1, 1, 2, 1, 2, 3] {
        conn.push(Body::Message(entry("g:9", seq, 2))).await;
    }
    for seq in [1, 2, 3] {
        assert_eq!(seq_of(&next_entry(&mut events).await), seq);
    }
    // Nothing more: the next event is the answer to a fresh push.
    conn.push(Body::Message(entry("g:9", 4, 2))).await;
    assert_eq!(seq_of(&next_entry(&mut events).await), 4);
}

#[tokio::test]
async fn an_ack_ahead_of_pushes_waits_for_them() {
    let gateway = FakeGateway::start().await;
    let (client, mut events) = Client::connect(gateway.options()).await.unwrap();
    let mut conn = gateway.accept().await;
    login(&client, &mut conn, &[("d:1:2", 1)]).await;
    let send = tokio::spawn({
        let client = client.clone();
        async move { client.send(2, "mine").await }
    });
    let (id, _) = conn.recv().await;
    let ack = SendAck {
        msg_id: 50,
        seq: 3,
        conversation_id: "d:1:2".into(),
        ..SendAck::default()
    };
    conn.reply(id, Body::Ack(ack)).await;
    send.await.unwrap().unwrap();
    // Seq 2 is missing: the client syncs it before showing its own seq 3.
    let (id, command) = conn.recv().await;
    let Command::Sync(sync) = command else {
        panic!("{command:?}")
    };
    assert_eq!(sync.after_seq, 1);
    conn.push(Body::Message(entry("d:1:2", 2, 2))).await;
    assert_eq!(seq_of(&next_entry(&mut events).await), 2);
    let Event::Message(own) = next_entry(&mut events).await else {
        panic!()
    };
    assert_eq!((own.seq, own.body.as_str()), (3, "mine"));
    let page = SyncReply {
        messages: vec![entry("d:1:2", 2, 2), entry("d:1:2", 3, 1)],
        has_more: false,
        last_seq: 3,
    };
    conn.reply(id, Body::Synced(page)).await;
    conn.push(Body::Message(entry("d:1:2", 4, 2))).await;
    assert_eq!(seq_of(&next_entry(&mut events).await), 4);
}

#[tokio::test]
async fn a_gateway_that_stops_answering_is_left_for_a_new_connection() {
    let gateway = FakeGateway::start().await;
    let mut options = gateway.options();
    options.request_timeout = Duration::from_millis(300);
    let (client, mut events) = Client::connect(options).await.unwrap();
    let mut frozen = gateway.accept().await;
    login(&client, &mut frozen, &[]).await;
    assert_eq!(next_event(&mut events).await, Event::Connected);

    // The gateway goes silent with the connection open: a request is never answered.
    let send = tokio::spawn({
        let client = client.clone();
        async move { client.send(2, "hello").await }
    });
    let (_, command) = frozen.recv().await;
    let Command::Send(first) = command else {
        panic!("{command:?}")
    };

    // The client gives the connection up and resumes on a new one, resending there.
    let mut conn = gateway.accept().await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    let (id, command) = conn.recv().await;
    assert!(matches!(command, Command::Resume(_)), "{command:?}");
    conn.reply(id, Body::Resumed(Resumed::default())).await;
    let (id, command) = conn.recv().await;
    assert_eq!(command, Command::Send(first), "the same send, once more");
    let ack = SendAck {
        msg_id: 9,
        seq: 1,
        conversation_id: "d:1:2".into(),
        ..SendAck::default()
    };
    conn.reply(id, Body::Ack(ack.clone())).await;
    assert_eq!(send.await.unwrap().unwrap(), ack);
    drop(frozen);
}

#[tokio::test]
async fn friend_request_pushes_are_events() {
    let gateway = FakeGateway::start().await;
    let (client, mut events) = Client::connect(gateway.options()).await.unwrap();
    let mut conn = gateway.accept().await;
    login(&client, &mut conn, &[]).await;
    let asked = FriendRequest {
        request_id: 7,
        from_user_id: 2,
        to_user_id: 1,
        message: "it's bob".into(),
        state: FriendRequestState::Pending as i32,
        created_at_ms: 1_764_392_400_000,
    };
    let answered = FriendRequest {
        request_id: 8,
        from_user_id: 1,
        to_user_id: 3,
        state: FriendRequestState::Accepted as i32,
        ..FriendRequest::default()
    };
    conn.push(Body::FriendRequested(asked.clone())).await;
    conn.push(Body::FriendResponded(answered.clone())).await;
    assert_eq!(next_entry(&mut events).await, Event::FriendRequested(asked));
    assert_eq!(
        next_entry(&mut events).await,
        Event::FriendResponded(answered)
    );
}

//! The SDK against a real `mpim`: two users chat, mpim is killed and started again, and
//! every acknowledged message arrives once, in order, the one sent while it was down
//! included.

mod support;

use std::time::Duration;

use im_client::{Client, Event, Options};
use support::mpim::Mpim;
use support::{alice_befriends_bob, next_event};

fn options(address: &str, device: &str) -> Options {
    Options::new(address)
        .device_id(device)
        .reconnect(Duration::from_millis(50), Duration::from_millis(500))
}

/// The seq and body of the next message (presence and connection events pass by).
async fn next_body(events: &mut im_client::Events) -> (u64, String) {
    loop {
        match next_event(events).await {
            Event::Message(m) => return (m.seq, m.body),
            Event::Recalled(m) | Event::Edited(m) => panic!("unexpected entry {m:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_chat_through_mpim_and_its_restart_loses_nothing() {
    let mut mpim = Mpim::start();
    let (alice, mut alice_events) = Client::connect(options(&mpim.address, "a1")).await.unwrap();
    // Bob over WebSocket: both transports meet in one conversation.
    let (bob, mut bob_events) = Client::connect(options(&mpim.ws, "b1")).await.unwrap();
    let bob_id = alice_befriends_bob(&alice, &bob).await;

    let ack = alice.send(bob_id, "one").await.unwrap();
    assert_eq!(ack.seq, 1);
    assert_eq!(next_body(&mut bob_events).await, (1, "one".into()));
    assert_eq!(next_body(&mut alice_events).await, (1, "one".into()));

    // mpim dies; alice sends while it is down; the send resolves once it is back.
    mpim.kill();
    let send = tokio::spawn({
        let alice = alice.clone();
        async move { alice.send(bob_id, "two").await }
    });
    tokio::task::block_in_place(|| mpim.restart());
    let ack = send.await.unwrap().unwrap();
    assert_eq!(ack.seq, 2);
    assert_eq!(next_body(&mut bob_events).await, (2, "two".into()));
    assert_eq!(next_body(&mut alice_events).await, (2, "two".into()));

    let alice_id = alice.user_id().unwrap();
    bob.send(alice_id, "three").await.unwrap();
    assert_eq!(next_body(&mut alice_events).await, (3, "three".into()));
    // Nothing twice, nothing missing: the next entry bob sees is his own, seq 3.
    assert_eq!(next_body(&mut bob_events).await, (3, "three".into()));
}

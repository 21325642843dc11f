//! The message service on SQLite and MariaDB: acks, seqs, idempotency, sync, read cursors,
//! recall and edit, permissions, fan-out, restarts with sends in flight.

mod support;

use im_common::on_both;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use im_common::bus::{Bus, ReadFrom, delivery_stream};
use im_common::identity::ServiceIdentity;
use im_common::proto::{
    ChatMessage, Delivery, EditRequest, Empty, MarkReadRequest, MessageKind, MessageServiceClient,
    RecallRequest, Route, SendAck, SendGroupRequest, SendRequest, SyncRequest,
};
use im_common::store::Sql;
use im_message::Messages;
use mprpc::Code;
use prost::Message as _;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

fn send(to: u64, id: &str, body: &str) -> SendRequest {
    SendRequest {
        to_user_id: to,
        client_msg_id: id.to_owned(),
        body: body.to_owned(),
    }
}

fn sync(conv: &str, after: u64, limit: u32) -> SyncRequest {
    SyncRequest {
        conversation_id: conv.to_owned(),
        after_seq: after,
        limit,
    }
}

async fn pair(sql: &Sql) -> (u64, u64) {
    let a = add_user(sql, "alice").await;
    let b = add_user(sql, "bob").await;
    befriend(sql, a, b).await;
    (a, b)
}

async fn sends_are_acked_in_seq_order_and_synced(sql: Sql) {
    let (a, b) = pair(&sql).await;
    let (_server, client) = service(&sql, &Bus::in_process(), settings());
    let mut acks = Vec::new();
    for n in 0..25 {
        let (from, to) = if n % 2 == 0 { (a, b) } else { (b, a) };
        let ack = client
            .send_with(
                &send(to, &format!("m{n}"), &format!("hello {n}")),
                &as_user(from),
            )
            .await
            .unwrap();
        assert!(!ack.duplicate && ack.msg_id != 0 && ack.server_time_ms > 0);
        acks.push(ack);
    }
    let conv = acks[0].conversation_id.clone();
    assert_eq!(conv, format!("d:{}:{}", a.min(b), a.max(b)));
    assert_eq!(
        acks.iter().map(|a| a.seq).collect::<Vec<_>>(),
        (1..=25).collect::<Vec<_>>()
    );
    // Pages of 10 across the boundaries: everything, in order, nothing twice.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = client
            .sync_with(&sync(&conv, after, 10), &as_user(b))
            .await
            .unwrap();
        assert_eq!(page.last_seq, 25);
        seen.extend(
            page.messages
                .iter()
                .map(|m| (m.seq, m.body.clone(), m.msg_id)),
        );
        after = page.messages.last().map_or(after, |m| m.seq);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seen.len(), 25);
    for (n, (seq, body, msg_id)) in seen.iter().enumerate() {
        assert_eq!(*seq, n as u64 + 1);
        assert_eq!(body, &format!("hello {n}"));
        assert_eq!(*msg_id, acks[n].msg_id);
    }
    // Reading deletes nothing.
    let again = client
        .sync_with(&sync(&conv, 0, 500), &as_user(a))
        .await
        .unwrap();
    assert_eq!(again.messages.len(), 25);
    assert!(!again.has_more);
}
on_both!(send_and_sync, sends_are_acked_in_seq_order_and_synced);

async fn resends_return_the_first_ack(sql: Sql) {
    let (a, b) = pair(&sql).await;
    let bus = Bus::in_process();
    // Two instances on one database: the resends race each other.
    let (_s1, one) = service(&sql, &bus, settings());
    let (_s2, two) = service(&sql, &bus, settings());
    let first = one
        .send_with(&send(b, "same", "once"), &as_user(a))
        .await
        .unwrap();
    let again = two
        .send_with(&send(b, "same", "once"), &as_user(a))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.msg_id, again.seq, again.server_time_ms),
        (first.msg_id, first.seq, first.server_time_ms)
    );
    for round in 0..10 {
        let id = format!("race-{round}");
        let request = send(b, &id, "raced");
        let options = as_user(a);
        let (x, y) = tokio::join!(
            one.send_with(&request, &options),
            two.send_with(&request, &options)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!((x.msg_id, x.seq), (y.msg_id, y.seq), "round {round}");
        assert!(
            x.duplicate != y.duplicate,
            "exactly one of the two stored it"
        );
    }
    assert_eq!(message_rows(&sql, &first.conversation_id).await, 11);
    let all = one
        .sync_with(&sync(&first.conversation_id, 0, 100), &as_user(b))
        .await
        .unwrap();
    assert_eq!(
        all.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=11).collect::<Vec<_>>()
    );
}
on_both!(idempotent_resend, resends_return_the_first_ack);

async fn concurrent_senders_get_gapless_seqs(sql: Sql) {
    let (a, b) = pair(&sql).await;
    let (_server, client) = service(&sql, &Bus::in_process(), settings());
    let mut tasks = Vec::new();
    for task in 0..32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for n in 0..5 {
                let from = if task % 2 == 0 { a } else { b };
                let to = if from == a { b } else { a };
                let ack = client
                    .send_with(&send(to, &format!("t{task}-{n}"), "x"), &as_user(from))
                    .await
                    .unwrap();
                seqs.push(ack.seq);
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a seq was handed out twice");
    assert_eq!(
        unique,
        (1..=160).collect::<BTreeSet<u64>>(),
        "seqs have a gap"
    );
}
on_both!(concurrent_seqs, concurrent_senders_get_gapless_seqs);

async fn read_cursors_and_unread_counts(sql: Sql) {
    let (a, b) = pair(&sql).await;
    let (_server, client) = service(&sql, &Bus::in_process(), settings());
    for n in 0..5 {
        client
            .send_with(&send(b, &format!("u{n}"), "ping"), &as_user(a))
            .await
            .unwrap();
    }
    let list = client
        .list_conversations_with(&Empty {}, &as_user(b))
        .await
        .unwrap();
    let conv = &list.conversations[0];
    assert_eq!(
        (conv.unread, conv.read_seq, conv.last_seq, conv.peer_id),
        (5, 0, 5, a)
    );
    assert_eq!(conv.last_message.as_ref().unwrap().seq, 5);
    // One's own messages are never unread.
    let mine = client
        .list_conversations_with(&Empty {}, &as_user(a))
        .await
        .unwrap();
    assert_eq!(
        (mine.conversations[0].unread, mine.conversations[0].read_seq),
        (0, 0)
    );

    let id = conv.conversation_id.clone();
    let read = client
        .mark_read_with(
            &MarkReadRequest {
                conversation_id: id.clone(),
                seq: 3,
            },
            &as_user(b),
        )
        .await
        .unwrap();
    assert_eq!(read.read_seq, 3);
    // Cursors never move back, nor past the end.
    let back = client
        .mark_read_with(
            &MarkReadRequest {
                conversation_id: id.clone(),
                seq: 1,
            },
            &as_user(b),
        )
        .await
        .unwrap();
    assert_eq!(back.read_seq, 3);
    let past = client
        .mark_read_with(
            &MarkReadRequest {
                conversation_id: id.clone(),
                seq: 99,
            },
            &as_user(b),
        )
        .await
        .unwrap();
    assert_eq!(past.read_seq, 5);
    let list = client
        .list_conversations_with(&Empty {}, &as_user(b))
        .await
        .unwrap();
    assert_eq!(list.conversations[0].unread, 0);
    // The sender's listing carries how far the peer read.
    let mine = client
        .list_conversations_with(&Empty {}, &as_user(a))
        .await
        .unwrap();
    assert_eq!(
        (
            mine.conversations[0].read_seq,
            mine.conversations[0].peer_read_seq
        ),
        (0, 5)
    );
}
on_both!(unread_counts, read_cursors_and_unread_counts);

async fn recall_and_edit_are_events_within_the_window(sql: Sql) {
    let (a, b) = pair(&sql).await;
    let (_server, client) = service(&sql, &Bus::in_process(), settings());
    let first = client
        .send_with(&send(b, "r1", "oops"), &as_user(a))
        .await
        .unwrap();
    let second = client
        .send_with(&send(b, "r2", "typo"), &as_user(a))
        .await
        .unwrap();
    let old = client
        .send_with(&send(b, "r3", "old news"), &as_user(a))
        .await
        .unwrap();
    sqlx::query("UPDATE messages SET created_at = created_at - 600000 WHERE msg_id = ?")
        .bind(i(old.msg_id))
        .execute(sql.pool())
        .await
        .unwrap();

    // Someone else's message, or an old one: refused.
    let theirs = client
        .recall_with(
            &RecallRequest {
                msg_id: first.msg_id,
                client_msg_id: String::new(),
            },
            &as_user(b),
        )
        .await;
    assert_eq!(code(theirs), Code::PermissionDenied);
    let late = client
        .recall_with(
            &RecallRequest {
                msg_id: old.msg_id,
                client_msg_id: String::new(),
            },
            &as_user(a),
        )
        .await;
    assert_eq!(code(late), Code::FailedPrecondition);
    let late = client
        .edit_with(
            &EditRequest {
                msg_id: old.msg_id,
                client_msg_id: "e0".into(),
                body: "x".into(),
            },
            &as_user(a),
        )
        .await;
    assert_eq!(code(late), Code::FailedPrecondition);

    let recall = client
        .recall_with(
            &RecallRequest {
                msg_id: first.msg_id,
                client_msg_id: String::new(),
            },
            &as_user(a),
        )
        .await
        .unwrap();
    assert_eq!(recall.seq, 4);
    let repeat = client
        .recall_with(
            &RecallRequest {
                msg_id: first.msg_id,
                client_msg_id: String::new(),
            },
            &as_user(a),
        )
        .await
        .unwrap();
    assert!(repeat.duplicate && repeat.seq == 4);
    let edit = client
        .edit_with(
            &EditRequest {
                msg_id: second.msg_id,
                client_msg_id: "e1".into(),
                body: "fixed".into(),
            },
            &as_user(a),
        )
        .await
        .unwrap();
    assert_eq!(edit.seq, 5);

    let all = client
        .sync_with(&sync(&first.conversation_id, 0, 100), &as_user(b))
        .await
        .unwrap()
        .messages;
    assert_eq!(all.len(), 5);
    assert!(
        all[0].recalled && all[0].body.is_empty(),
        "a recalled body is no longer returned"
    );
    assert!(all[1].edited && all[1].body == "fixed");
    assert_eq!(
        (all[3].kind, all[3].ref_msg_id),
        (MessageKind::Recall as i32, first.msg_id)
    );
    assert_eq!(
        (all[4].kind, all[4].ref_msg_id, all[4].body.as_str()),
        (MessageKind::Edit as i32, second.msg_id, "fixed")
    );
    // A recalled message cannot be edited.
    let dead = client
        .edit_with(
            &EditRequest {
                msg_id: first.msg_id,
                client_msg_id: "e2".into(),
                body: "x".into(),
            },
            &as_user(a),
        )
        .await;
    assert_eq!(code(dead), Code::FailedPrecondition);
}
on_both!(
    recall_and_edit,
    recall_and_edit_are_events_within_the_window
);

async fn a_recalled_message_leaves_no_text_of_any_edit(sql: Sql) {
    let (a, b) = pair(&sql).await;
    let (_server, client) = service(&sql, &Bus::in_process(), settings());
    let sent = client
        .send_with(&send(b, "x1", "secret draft"), &as_user(a))
        .await
        .unwrap();
    for (n, body) in ["secret edit one", "secret edit two"].iter().enumerate() {
        let edit = EditRequest {
            msg_id: sent.msg_id,
            client_msg_id: format!("xe{n}"),
            body: (*body).to_owned(),
        };
        client.edit_with(&edit, &as_user(a)).await.unwrap();
    }
    let recall = RecallRequest {
        msg_id: sent.msg_id,
        client_msg_id: String::new(),
    };
    client.recall_with(&recall, &as_user(a)).await.unwrap();

    let conv = sent.conversation_id.clone();
    for user in [a, b] {
        let synced = client
            .sync_with(&sync(&conv, 0, 100), &as_user(user))
            .await
            .unwrap()
            .messages;
        assert_eq!(synced.len(), 4, "the message, two edits, the recall");
        for message in &synced {
            assert!(
                !message.body.contains("secret"),
                "{user}'s sync returns recalled text: {message:?}"
            );
        }
        let listing = client
            .list_conversations_with(&Empty {}, &as_user(user))
            .await
            .unwrap();
        let preview = listing
            .conversations
            .iter()
            .find(|c| c.conversation_id == conv)
            .and_then(|c| c.last_message.clone())
            .unwrap();
        assert!(!preview.body.contains("secret"), "{preview:?}");
    }
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM messages WHERE conv_id = ?")
        .bind(conv)
        .fetch_all(sql.pool())
        .await
        .unwrap();
    assert!(
        stored.iter().all(|body| body.is_empty()),
        "the rows hold no text: {stored:?}"
    );
}
on_both!(
    recall_after_edit,
    a_recalled_message_leaves_no_text_of_any_edit
);

async fn permissions_are_enforced(sql: Sql) {
    let (a, b) = pair(&sql).await;
    let stranger = add_user(&sql, "mallory").await;
    let bus = Bus::in_process();
    let (server, client) = service(&sql, &bus, settings());

    assert_eq!(
        code(
            client
                .send_with(&send(a, "s1", "hi"), &as_user(stranger))
                .await
        ),
        Code::PermissionDenied
    );
    block(&sql, b, a).await;
    bus.cache
        .delete(vec![im_common::bus::keys::blocked(b)])
        .await
        .unwrap();
    assert_eq!(
        code(client.send_with(&send(b, "s2", "hi"), &as_user(a)).await),
        Code::PermissionDenied
    );
    // b can still write to a: the block is one way.
    client
        .send_with(&send(a, "s3", "hi"), &as_user(b))
        .await
        .unwrap();

    let group = add_group(&sql, a, &[b]).await;
    let post = |id: &str| SendGroupRequest {
        group_id: group,
        client_msg_id: id.to_owned(),
        body: "group hi".into(),
    };
    assert_eq!(
        code(
            client
                .send_group_with(&post("g1"), &as_user(stranger))
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            client
                .sync_with(&sync(&format!("g:{group}"), 0, 10), &as_user(stranger))
                .await
        ),
        Code::PermissionDenied
    );
    let conv = format!("d:{}:{}", a.min(b), a.max(b));
    assert_eq!(
        code(
            client
                .sync_with(&sync(&conv, 0, 10), &as_user(stranger))
                .await
        ),
        Code::PermissionDenied
    );

    sqlx::query("UPDATE group_members SET muted_until = ? WHERE group_id = ? AND user_id = ?")
        .bind(im_common::ids::now_ms() + 60_000)
        .bind(i(group))
        .bind(i(b))
        .execute(sql.pool())
        .await
        .unwrap();
    assert_eq!(
        code(client.send_group_with(&post("g2"), &as_user(b)).await),
        Code::PermissionDenied
    );
    let ack = client
        .send_group_with(&post("g3"), &as_user(a))
        .await
        .unwrap();
    assert_eq!(ack.seq, 1);

    // Identity comes from metadata only: no user → refused; no service identity → refused.
    let anonymous = mprpc::CallOptions::new();
    assert_eq!(
        code(client.send_with(&send(b, "s4", "hi"), &anonymous).await),
        Code::Unauthenticated
    );
    let bare = im_common::proto::MessageServiceClient::new(mprpc::Client::in_process(&server));
    assert_eq!(
        code(bare.send_with(&send(b, "s5", "hi"), &as_user(a)).await),
        Code::Unauthenticated
    );
    // The stored sender is the caller.
    let stored = client
        .sync_with(&sync(&format!("g:{group}"), 0, 10), &as_user(b))
        .await
        .unwrap();
    assert_eq!(stored.messages[0].sender_id, a);
}
on_both!(permissions, permissions_are_enforced);

async fn hostile_bodies_round_trip(sql: Sql) {
    let (a, b) = pair(&sql).await;
    let (_server, client) = service(&sql, &Bus::in_process(), settings());
    let bodies = [
        "it's \"quoted\" `back` \\slashed".to_owned(),
        "'; DROP TABLE messages; --".to_owned(),
        "nul\0in\0the\0middle\0".to_owned(),
        "emoji 🦀🎉 and ünïcödé".to_owned(),
        "x".repeat(65_536),
    ];
    for (n, body) in bodies.iter().enumerate() {
        client
            .send_with(&send(b, &format!("h{n}"), body), &as_user(a))
            .await
            .unwrap();
    }
    let conv = format!("d:{}:{}", a.min(b), a.max(b));
    let stored = client
        .sync_with(&sync(&conv, 0, 10), &as_user(b))
        .await
        .unwrap()
        .messages;
    let returned: Vec<&str> = stored.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(
        returned,
        bodies.iter().map(String::as_str).collect::<Vec<_>>()
    );

    let too_big = client
        .send_with(&send(b, "big", &"x".repeat(65_537)), &as_user(a))
        .await;
    let err = too_big.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.to_string()
            .contains("body is 65537 bytes, more than the limit of 65536"),
        "{err}"
    );
    assert_eq!(
        code(client.send_with(&send(b, "", "x"), &as_user(a)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.send_with(&send(b, "empty", " "), &as_user(a)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.sync_with(&sync("d:x", 0, 10), &as_user(a)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(client.sync_with(&sync(&conv, 0, 501), &as_user(a)).await),
        Code::InvalidArgument
    );
}
on_both!(hostile_bodies, hostile_bodies_round_trip);

async fn a_group_message_is_one_row_and_one_entry_per_gateway(sql: Sql) {
    let owner = add_user(&sql, "owner").await;
    let mut members = Vec::new();
    for n in 0..999 {
        members.push(add_user(&sql, &format!("member{n}")).await);
    }
    let group = add_group(&sql, owner, &members).await;
    let bus = Bus::in_process();
    // Every member online, spread over three gateways; the owner on two devices.
    for (n, user) in members.iter().enumerate() {
        let route = Route {
            user_id: *user,
            device_id: "d".into(),
            device_kind: 0,
            gateway_id: format!("gw{}", n % 3),
        };
        bus.routes
            .bind(route, Duration::from_secs(60))
            .await
            .unwrap();
    }
    for (device, gateway) in [("phone", "gw0"), ("laptop", "gw1")] {
        let route = Route {
            user_id: owner,
            device_id: device.into(),
            device_kind: 0,
            gateway_id: gateway.into(),
        };
        bus.routes
            .bind(route, Duration::from_secs(60))
            .await
            .unwrap();
    }
    let (_server, client) = service(&sql, &bus, settings());
    let options = im_common::identity::for_user(
        mprpc::CallOptions::new(),
        &im_common::identity::User::new(owner).on_device("phone"),
    );
    let request = SendGroupRequest {
        group_id: group,
        client_msg_id: "fan".into(),
        body: "to all".into(),
    };
    let ack = client.send_group_with(&request, &options).await.unwrap();
    assert_eq!(message_rows(&sql, &format!("g:{group}")).await, 1);

    let mut reached = BTreeSet::new();
    for gateway in ["gw0", "gw1", "gw2"] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let entries = loop {
            let entries = bus
                .streams
                .read(
                    delivery_stream(gateway),
                    "c".into(),
                    ReadFrom::New,
                    100,
                    Duration::from_millis(200),
                )
                .await
                .unwrap();
            if !entries.is_empty() || tokio::time::Instant::now() > deadline {
                break entries;
            }
        };
        assert_eq!(entries.len(), 1, "one entry for {gateway}");
        let delivery = Delivery::decode(entries[0].payload.clone()).unwrap();
        assert_eq!(delivery.message.as_ref().unwrap().msg_id, ack.msg_id);
        assert_eq!(delivery.sender_device_id, "phone");
        reached.extend(delivery.user_ids);
    }
    assert_eq!(
        reached.len(),
        1000,
        "every member, the sender's other device included"
    );
}
on_both!(
    group_fan_out,
    a_group_message_is_one_row_and_one_entry_per_gateway
);

/// Senders running at once while the service restarts under them.
const SENDERS: usize = 6;
/// Sends per sender, each resent with its client_msg_id until acknowledged.
const SENDS: usize = 40;
/// Restarts in a run, spread over it: each waits for another share of the acks.
const RESTARTS: usize = 3;

/// One life of the message service: a handler of its own, served over TCP until stopped.
struct Life {
    client: MessageServiceClient,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<()>,
}

impl Life {
    async fn start(sql: &Sql, bus: &Bus) -> Life {
        let messages = Messages::new(sql.clone(), bus.clone(), settings());
        // No grace: calls in flight when it stops are cut off, as a crash would.
        let server = im_message::builder(messages)
            .grace_period(Duration::ZERO)
            .build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        // The server, and with it the handler and its committers, is dropped when this ends.
        let serving = tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            server.serve(listener, stopped).await.unwrap();
        });
        let client = mprpc::Client::builder()
            .intercept(ServiceIdentity::new("gateway"))
            .timeout(Some(Duration::from_secs(10)))
            .connect_lazy(addr.to_string());
        Life {
            client: MessageServiceClient::new(client),
            stop,
            serving,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.serving.await.unwrap();
    }
}

/// What a sender sees of the restarts: the life to send to (its number and a client),
/// how many lives were told to stop, and the count of acks the restarts are paced by.
#[derive(Clone)]
struct Restarts {
    lives: watch::Receiver<(usize, MessageServiceClient)>,
    stopped: Arc<AtomicUsize>,
    acked: Arc<watch::Sender<usize>>,
}

/// Sends `ids` from `from` to `to` in turn; a send that fails because its life stopped is
/// resent, with the same client_msg_id, to the next. Returns the acks by client_msg_id and
/// how many sends failed.
async fn send_through_restarts(
    mut restarts: Restarts,
    from: u64,
    to: u64,
    ids: Vec<String>,
) -> (Vec<(String, SendAck)>, usize) {
    let mut acks = Vec::new();
    let mut failed = 0;
    for id in ids {
        loop {
            let (life, client) = restarts.lives.borrow_and_update().clone();
            match client
                .send_with(&send(to, &id, "kept"), &as_user(from))
                .await
            {
                Ok(ack) => {
                    acks.push((id, ack));
                    restarts.acked.send_modify(|n| *n += 1);
                    break;
                }
                Err(err) => {
                    assert!(
                        restarts.stopped.load(Ordering::SeqCst) > life,
                        "{id} failed while its service was up: {err}"
                    );
                    failed += 1;
                    // Told to stop, so a next life is coming.
                    restarts.lives.changed().await.unwrap();
                }
            }
        }
    }
    (acks, failed)
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .unwrap_or_else(|_| panic!("{what} took over a minute"))
}

async fn a_restart_loses_nothing_acknowledged(sql: Sql) {
    let (a, b) = pair(&sql).await;
    let c = add_user(&sql, "carol").await;
    befriend(&sql, a, c).await;
    let bus = Bus::in_process();
    let mut life = Life::start(&sql, &bus).await;
    let (next_life, lives) = watch::channel((0, life.client.clone()));
    let (acked, mut acks_so_far) = watch::channel(0);
    let restarts = Restarts {
        lives,
        stopped: Arc::default(),
        acked: Arc::new(acked),
    };
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        // Both ways in a–b and one way in a–c: two conversations, several writers each.
        let (from, to) = [(a, b), (b, a), (a, c)][sender % 3];
        let ids = (0..SENDS).map(|n| format!("s{sender}-{n}")).collect();
        let sending = send_through_restarts(restarts.clone(), from, to, ids);
        senders.push(tokio::spawn(sending));
    }
    for restart in 1..=RESTARTS {
        // Part way through, with every sender still sending.
        let share = restart * SENDERS * SENDS / (RESTARTS + 1);
        within("acks", acks_so_far.wait_for(|n| *n >= share))
            .await
            .unwrap();
        // Counted before the stop, so every failure it causes sees it.
        restarts.stopped.fetch_add(1, Ordering::SeqCst);
        life.stop().await;
        life = Life::start(&sql, &bus).await;
        next_life.send_replace((restart, life.client.clone()));
    }
    let mut acks = Vec::new();
    let mut failed = 0;
    for sender in senders {
        let (theirs, their_failures) = within("a sender", sender).await.unwrap();
        acks.extend(theirs);
        failed += their_failures;
    }
    assert!(failed > 0, "no send was in flight at a restart");
    assert_eq!(acks.len(), SENDERS * SENDS);
    assert_stored_once(&life.client, a, &acks).await;
}
on_both!(restart, a_restart_loses_nothing_acknowledged);

/// Every acknowledged send is stored once, as acknowledged, and nothing else is: each
/// conversation holds seqs 1..n for its n acks.
async fn assert_stored_once(
    client: &MessageServiceClient,
    reader: u64,
    acks: &[(String, SendAck)],
) {
    let mut by_conversation: BTreeMap<&str, Vec<(&str, &SendAck)>> = BTreeMap::new();
    for (id, ack) in acks {
        by_conversation
            .entry(&ack.conversation_id)
            .or_default()
            .push((id, ack));
    }
    assert_eq!(by_conversation.len(), 2);
    for (conv, acks) in by_conversation {
        let page = client
            .sync_with(&sync(conv, 0, 500), &as_user(reader))
            .await
            .unwrap();
        assert!(!page.has_more);
        let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=acks.len() as u64).collect::<Vec<_>>(),
            "{conv}: seqs 1..n for n acks"
        );
        let stored: BTreeMap<&str, &ChatMessage> = page
            .messages
            .iter()
            .map(|m| (m.client_msg_id.as_str(), m))
            .collect();
        assert_eq!(
            stored.len(),
            page.messages.len(),
            "{conv}: a send stored twice"
        );
        for (id, ack) in acks {
            let message = stored
                .get(id)
                .unwrap_or_else(|| panic!("{conv}: acknowledged {id} lost"));
            assert_eq!((message.msg_id, message.seq), (ack.msg_id, ack.seq), "{id}");
        }
    }
}

async fn a_flushed_redis_loses_no_seq(sql: Sql) {
    let (a, b) = pair(&sql).await;
    let redis = im_common::bus::testing::redis()
        .await
        .expect("Redis at 127.0.0.1:6379");
    let bus = Bus::new(redis.clone());
    let (_server, client) = service(&sql, &bus, settings());
    let mut seqs = Vec::new();
    for n in 0..10 {
        seqs.push(
            client
                .send_with(&send(b, &format!("f{n}"), "before"), &as_user(a))
                .await
                .unwrap()
                .seq,
        );
    }
    // Routes, streams, cached friend lists: all gone at once.
    redis.clear().await.unwrap();
    for n in 10..20 {
        seqs.push(
            client
                .send_with(&send(b, &format!("f{n}"), "after"), &as_user(a))
                .await
                .unwrap()
                .seq,
        );
    }
    assert_eq!(
        seqs,
        (1..=20).collect::<Vec<u64>>(),
        "seqs continue, none reused"
    );
    redis.clear().await.unwrap();
}
on_both!(redis_flushed, a_flushed_redis_loses_no_seq);

/// Sends into one conversation wait for each other (its row lock); sends into another,
/// owned by another committer, do not wait for them. MySQL only: SQLite has one writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_conversations_do_not_wait_on_each_other() {
    im_common::store::testing::with_db(
        im_common::store::testing::Engine::MySql,
        |sql| async move {
            let (a, b) = pair(&sql).await;
            // A second pair whose conversation another of the 4 committers owns.
            let mut attempt = 0;
            let (c, d) = loop {
                attempt += 1;
                let c = add_user(&sql, &format!("c{attempt}")).await;
                let d = add_user(&sql, &format!("d{attempt}")).await;
                let shard = |x: u64, y: u64| {
                    let conv = im_common::ids::ConversationId::direct(x, y).to_string();
                    im_message::conversation_shard(&conv, 4)
                };
                if shard(c, d) != shard(a, b) {
                    befriend(&sql, c, d).await;
                    break (c, d);
                }
            };
            let mut settings = settings();
            settings.committers = 4;
            let (_server, client) = service(&sql, &Bus::in_process(), settings);
            let first = client
                .send_with(&send(b, "x0", "hi"), &as_user(a))
                .await
                .unwrap();
            client
                .send_with(&send(d, "y0", "hi"), &as_user(c))
                .await
                .unwrap();

            // Someone holds conversation a–b's row: its next send waits ...
            let mut holder = sql.pool().begin().await.unwrap();
            sqlx::query("UPDATE conversations SET updated_at = updated_at + 1 WHERE conv_id = ?")
                .bind(first.conversation_id.clone())
                .execute(&mut *holder)
                .await
                .unwrap();
            let waiting = {
                let client = client.clone();
                tokio::spawn(
                    async move { client.send_with(&send(b, "x1", "waits"), &as_user(a)).await },
                )
            };
            // ... while conversation c–d goes on.
            for n in 1..=5 {
                let ack = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.send_with(&send(d, &format!("y{n}"), "goes on"), &as_user(c)),
                )
                .await
                .expect("a busy conversation held up another")
                .unwrap();
                assert_eq!(ack.seq, n + 1);
            }
            assert!(
                !waiting.is_finished(),
                "the held conversation's send went through the lock"
            );
            holder.rollback().await.unwrap();
            assert_eq!(waiting.await.unwrap().unwrap().seq, 2);
        },
    )
    .await;
}

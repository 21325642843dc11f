//! The message store's conversation listing, run on SQLite and on MariaDB: each
//! conversation carries the user's own cursor and, for a 1:1 conversation, the peer's.

use std::sync::atomic::{AtomicU64, Ordering};

use im_common::ids::ConversationId;
use im_common::on_both;
use im_common::proto::{Conversation, JoinPolicy, MessageKind};
use im_common::store::Sql;
use im_common::store::groups::{GroupStore, NewGroup};
use im_common::store::messages::{MessageStore, NewMessage};

on_both!(the_listing_carries_the_peer_cursor);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

async fn send(sql: &Sql, conversation: ConversationId, sender: u64, count: usize) {
    let batch: Vec<NewMessage> = (0..count)
        .map(|_| NewMessage {
            conversation,
            sender,
            client_msg_id: format!("c-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            kind: MessageKind::Text,
            body: "hello".to_owned(),
            ref_msg_id: 0,
        })
        .collect();
    let next_id = || NEXT_ID.fetch_add(1, Ordering::Relaxed);
    sql.commit(&batch, &next_id).await.unwrap();
}

async fn listed(sql: &Sql, user: u64, conversation: &str) -> Conversation {
    sql.conversations(user, 100)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.conversation_id == conversation)
        .unwrap_or_else(|| panic!("{conversation} is not listed for {user}"))
}

async fn the_listing_carries_the_peer_cursor(sql: Sql) {
    let (a, b, c) = (1, 2, 3);
    let ab = ConversationId::direct(a, b);
    let ac = ConversationId::direct(a, c);
    send(&sql, ab, a, 4).await;
    send(&sql, ac, a, 2).await;
    let (ab_id, ac_id) = (ab.to_string(), ac.to_string());

    // Nobody has read anything yet.
    let mine = listed(&sql, a, &ab_id).await;
    assert_eq!(
        (mine.read_seq, mine.peer_read_seq, mine.last_seq),
        (0, 0, 4)
    );

    // b reads up to 3, c everything: a sees each peer's own cursor, not the other's.
    sql.mark_read(ab, b, 3).await.unwrap();
    sql.mark_read(ac, c, 2).await.unwrap();
    assert_eq!(listed(&sql, a, &ab_id).await.peer_read_seq, 3);
    assert_eq!(listed(&sql, a, &ac_id).await.peer_read_seq, 2);
    // a's own cursor does not show as b's peer cursor, nor b's as a's own.
    let theirs = listed(&sql, b, &ab_id).await;
    assert_eq!((theirs.read_seq, theirs.peer_read_seq), (3, 0));
    sql.mark_read(ab, a, 4).await.unwrap();
    let theirs = listed(&sql, b, &ab_id).await;
    assert_eq!((theirs.read_seq, theirs.peer_read_seq), (3, 4));
    let mine = listed(&sql, a, &ab_id).await;
    assert_eq!((mine.read_seq, mine.peer_read_seq), (4, 3));

    // A group lists 0 however far its members read, and only once per member.
    let group = sql
        .create_group(&NewGroup {
            name: "team".to_owned(),
            description: String::new(),
            join_policy: JoinPolicy::Open,
            owner: a,
            members: vec![b, c],
        })
        .await
        .unwrap();
    let g = ConversationId::Group(group.group_id);
    send(&sql, g, b, 3).await;
    sql.mark_read(g, b, 3).await.unwrap();
    sql.mark_read(g, c, 2).await.unwrap();
    let listing = sql.conversations(a, 100).await.unwrap();
    assert_eq!(listing.len(), 3, "{listing:?}");
    let in_group = listed(&sql, a, &g.to_string()).await;
    assert_eq!((in_group.peer_read_seq, in_group.last_seq), (0, 3));
}

//! The message store, run on SQLite and on MariaDB: the conversation listing carries the
//! user's own cursor and, for a 1:1 conversation, the peer's; a recall leaves no text of the
//! message or of any edit of it in the stored rows.

use std::sync::atomic::{AtomicU64, Ordering};

use im_common::ids::ConversationId;
use im_common::on_both;
use im_common::proto::{ChatMessage, Conversation, JoinPolicy, MessageKind};
use im_common::store::Sql;
use im_common::store::groups::{GroupStore, NewGroup};
use im_common::store::messages::{MessageStore, NewMessage};

on_both!(the_listing_carries_the_peer_cursor);
on_both!(a_recall_empties_the_message_and_its_edits);
on_both!(an_edit_committed_after_the_recall_keeps_no_text);
on_both!(a_batch_larger_than_one_statement_may_carry_is_stored_whole);

/// Two commits that raise the same conversations by different counts, many times at once:
/// they must take the rows' locks in one order, or they deadlock (and run again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crossing_commits_never_deadlock() {
    use im_common::store::testing::{Engine, with_db};
    fn next_id() -> u64 {
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    }
    with_db(Engine::MySql, async |sql: Sql| {
        let convs: Vec<ConversationId> = (0..8).map(|i| ConversationId::Group(100 + i)).collect();
        // The conversations exist (only the raises are measured), among many others, as in
        // a real table: a table of a few rows is scanned whole, which hides the lock order.
        let others: Vec<NewMessage> = (0..2000)
            .map(|i| ConversationId::Group(10_000 + i))
            .chain(convs.iter().copied())
            .map(|conversation| NewMessage {
                conversation,
                sender: 1,
                client_msg_id: format!("x-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
                kind: MessageKind::Text,
                body: "first".to_owned(),
                ref_msg_id: 0,
            })
            .collect();
        for chunk in others.chunks(500) {
            sql.commit(chunk, &next_id).await.unwrap();
        }
        let batch = |sender: u64, heavy_first: bool| {
            let mut batch = Vec::new();
            for (k, conv) in convs.iter().enumerate() {
                // One side puts two messages where the other puts one, and the other way
                // round: grouped by count, their raises would run in opposite orders.
                let count = if (k % 2 == 0) == heavy_first { 2 } else { 1 };
                for _ in 0..count {
                    batch.push(NewMessage {
                        conversation: *conv,
                        sender,
                        client_msg_id: format!("x-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
                        kind: MessageKind::Text,
                        body: "crossing".to_owned(),
                        ref_msg_id: 0,
                    });
                }
            }
            batch
        };
        for _ in 0..150 {
            let (a, b) = (batch(1, true), batch(2, false));
            let (one, two) = (sql.clone(), sql.clone());
            let left = tokio::spawn(async move { one.commit(&a, &next_id).await });
            let right = tokio::spawn(async move { two.commit(&b, &next_id).await });
            left.await.unwrap().unwrap();
            right.await.unwrap().unwrap();
        }
        assert_eq!(
            sql.commit_conflicts(),
            0,
            "commits deadlocked and ran again"
        );
        // Every conversation's seqs are 1..n, with no gap or repeat.
        for conv in &convs {
            let (messages, _, last) = sql.sync(*conv, 0, 1000).await.unwrap();
            let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=last).collect::<Vec<_>>());
            assert_eq!(last, 1 + 150 * 3);
        }
    })
    .await;
}

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

fn event(
    conversation: ConversationId,
    sender: u64,
    kind: MessageKind,
    body: &str,
    of: u64,
) -> NewMessage {
    NewMessage {
        conversation,
        sender,
        client_msg_id: format!("c-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
        kind,
        body: body.to_owned(),
        ref_msg_id: of,
    }
}

/// Commits `batch`; returns the stored messages.
async fn commit(sql: &Sql, batch: &[NewMessage]) -> Vec<ChatMessage> {
    let next_id = || NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let outcomes = sql.commit(batch, &next_id).await.unwrap();
    outcomes.iter().map(|o| o.message().clone()).collect()
}

/// Every stored body of `conversation`, read from the rows themselves.
async fn stored_bodies(sql: &Sql, conversation: ConversationId) -> Vec<String> {
    let bodies: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT body FROM messages WHERE conv_id = ? ORDER BY seq")
            .bind(conversation.to_string())
            .fetch_all(sql.pool())
            .await
            .unwrap();
    bodies
        .into_iter()
        .map(|body| String::from_utf8(body).unwrap())
        .collect()
}

async fn a_recall_empties_the_message_and_its_edits(sql: Sql) {
    let (a, b) = (11, 12);
    let ab = ConversationId::direct(a, b);
    let kept = commit(&sql, &[event(ab, a, MessageKind::Text, "kept", 0)]).await;
    let original = commit(&sql, &[event(ab, a, MessageKind::Text, "secret-0", 0)]).await;
    let id = original[0].msg_id;
    commit(&sql, &[event(ab, a, MessageKind::Edit, "secret-1", id)]).await;
    // Two edits and an edit of the other message in one batch.
    commit(
        &sql,
        &[
            event(ab, a, MessageKind::Edit, "secret-2", id),
            event(ab, a, MessageKind::Edit, "kept too", kept[0].msg_id),
            event(ab, a, MessageKind::Edit, "secret-3", id),
        ],
    )
    .await;
    assert!(
        stored_bodies(&sql, ab)
            .await
            .iter()
            .any(|b| b == "secret-3")
    );

    commit(&sql, &[event(ab, a, MessageKind::Recall, "", id)]).await;

    let bodies = stored_bodies(&sql, ab).await;
    assert!(
        bodies.iter().all(|b| !b.starts_with("secret")),
        "no text of the recalled message is stored: {bodies:?}"
    );
    assert!(bodies.contains(&"kept too".to_owned()), "{bodies:?}");
    let (synced, _, _) = sql.sync(ab, 0, 100).await.unwrap();
    assert!(synced.iter().all(|m| !m.body.starts_with("secret")));
    assert!(sql.message(id).await.unwrap().unwrap().recalled);
    let preview = listed(&sql, b, &ab.to_string()).await.last_message.unwrap();
    assert!(!preview.body.starts_with("secret"), "{preview:?}");
}

async fn an_edit_committed_after_the_recall_keeps_no_text(sql: Sql) {
    let (a, b) = (21, 22);
    let ab = ConversationId::direct(a, b);
    let original = commit(&sql, &[event(ab, a, MessageKind::Text, "secret-0", 0)]).await;
    let id = original[0].msg_id;
    // An edit checked before the recall committed, and committed after it; another in the
    // recall's own batch, after it.
    commit(&sql, &[event(ab, a, MessageKind::Recall, "", id)]).await;
    let late = commit(&sql, &[event(ab, a, MessageKind::Edit, "secret-1", id)]).await;
    assert_eq!(late[0].body, "", "the edit's push carries no text");
    let other = commit(&sql, &[event(ab, a, MessageKind::Text, "secret-2", 0)]).await;
    let same_batch = commit(
        &sql,
        &[
            event(ab, a, MessageKind::Recall, "", other[0].msg_id),
            event(ab, a, MessageKind::Edit, "secret-3", other[0].msg_id),
        ],
    )
    .await;
    assert_eq!(same_batch[1].body, "");

    let bodies = stored_bodies(&sql, ab).await;
    assert!(
        bodies.iter().all(|b| !b.starts_with("secret")),
        "no text of a recalled message is stored: {bodies:?}"
    );
}

/// 256 bodies of 64 KiB: one INSERT of them all would be over MariaDB's default
/// `max_allowed_packet` (16 MiB).
async fn a_batch_larger_than_one_statement_may_carry_is_stored_whole(sql: Sql) {
    let conv = ConversationId::direct(7, 8);
    let body = "b".repeat(64 * 1024);
    let batch: Vec<NewMessage> = (0..256)
        .map(|_| NewMessage {
            conversation: conv,
            sender: 7,
            client_msg_id: format!("big-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            kind: MessageKind::Text,
            body: body.clone(),
            ref_msg_id: 0,
        })
        .collect();
    let next_id = || NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let outcomes = sql.commit(&batch, &next_id).await.unwrap();
    assert_eq!(outcomes.len(), 256);
    let (messages, _, last) = sql.sync(conv, 0, 1000).await.unwrap();
    assert_eq!((messages.len(), last), (256, 256));
    assert!(messages.iter().all(|m| m.body.len() == 64 * 1024));
}

/// A message the database refuses (here: one over `max_allowed_packet`) fails alone; the
/// others of its batch are stored, with gapless seqs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_fails_alone_and_its_batch_is_stored() {
    use im_common::store::testing::{Engine, with_db};
    with_db(Engine::MySql, async |sql: Sql| {
        let conv = ConversationId::direct(3, 4);
        let message = |body: String| NewMessage {
            conversation: conv,
            sender: 3,
            client_msg_id: format!("p-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
            kind: MessageKind::Text,
            body,
            ref_msg_id: 0,
        };
        let mut batch: Vec<NewMessage> = (0..7).map(|i| message(format!("fine {i}"))).collect();
        batch.insert(4, message("x".repeat(17 << 20)));
        let next_id = || NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let parts = sql.commit_in_parts(&batch, &next_id).await;
        let mut stored = Vec::new();
        for (range, result) in parts {
            match result {
                Ok(outcomes) => {
                    assert_eq!(outcomes.len(), range.len());
                    stored.extend(range);
                }
                Err(err) => {
                    assert_eq!(range, 4..5, "{err}");
                    assert!(err.is_refused(), "{err}");
                }
            }
        }
        assert_eq!(stored, [0, 1, 2, 3, 5, 6, 7]);
        let (messages, _, last) = sql.sync(conv, 0, 100).await.unwrap();
        let bodies: Vec<&str> = messages.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(
            bodies,
            (0..7).map(|i| format!("fine {i}")).collect::<Vec<_>>()
        );
        let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
        assert_eq!((seqs, last), ((1..=7).collect(), 7));
    })
    .await;
}

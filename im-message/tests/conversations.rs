//! ListConversations on SQLite and MariaDB: with hundreds of conversations, every one is
//! listed with every field as defined, and on MariaDB the listing runs a number of `SELECT`s
//! that does not grow with the number of conversations.

mod support;

use std::cmp::Reverse;

use im_common::bus::Bus;
use im_common::config::DatabaseConfig;
use im_common::ids::ConversationId;
use im_common::on_both;
use im_common::proto::{
    ChatMessage, Conversation, ConversationKind, Empty, MessageKind, MessageServiceClient,
};
use im_common::store::Sql;
use im_common::store::testing::TestDb;
use sqlx::Row;
use support::*;

/// More than one chunk of the store's lists (256), fewer than the listing's cap (500).
const CONVERSATIONS: u64 = 300;

/// The user with [`CONVERSATIONS`] conversations.
const OWNER: u64 = 1;

/// The other member of every group conversation, who posts in all of them.
const GROUP_PEER: u64 = 1000;

/// One conversation as written, and what each member's listing must say of it.
struct Model {
    id: ConversationId,
    updated_at: i64,
    /// Each member with its read cursor.
    members: Vec<(u64, u64)>,
    messages: Vec<ChatMessage>,
}

/// Conversation `k`: two in three are direct (with user `2 + k`), one in three are groups
/// (group `1 + k`); each has `k % 7` messages (some none at all), from both sides, some of
/// them recalls and edits (which never count as unread), and cursors spread over all seqs.
/// Activity times tie in pairs, so the order by conversation id is seen too.
fn model(k: u64) -> Model {
    let (id, other) = match k % 3 {
        2 => (ConversationId::Group(1 + k), GROUP_PEER),
        _ => (ConversationId::direct(OWNER, 2 + k), 2 + k),
    };
    let n = k % 7;
    let messages = (1..=n)
        .map(|seq| {
            let base = 10_000 + k * 10;
            let (kind, ref_msg_id) = match seq {
                3 if k % 5 == 0 => (MessageKind::Recall, base + 1),
                4 if k % 4 == 0 => (MessageKind::Edit, base + 2),
                _ => (MessageKind::Text, 0),
            };
            ChatMessage {
                msg_id: base + seq,
                conversation_id: id.to_string(),
                seq,
                sender_id: if (k + seq) % 2 == 0 { OWNER } else { other },
                client_msg_id: format!("c{k}.{seq}"),
                kind: kind as i32,
                body: match kind {
                    MessageKind::Recall => String::new(),
                    _ => format!("body {k}.{seq} ✓ 'quoted' \"x\""),
                },
                ref_msg_id,
                server_time_ms: 1_700_000_000_000 + i(base + seq),
                recalled: seq == 1 && k % 5 == 0 && n >= 3,
                edited: seq == 2 && k % 4 == 0 && n >= 4,
            }
        })
        .collect();
    Model {
        id,
        updated_at: 5_000 - i(k / 2),
        members: vec![(OWNER, (k * 5) % (n + 1)), (other, (k * 3) % (n + 1))],
        messages,
    }
}

/// Writes the models straight into the tables the listing reads, in multi-row inserts.
async fn seed(sql: &Sql, models: &[Model]) {
    for chunk in models.chunks(100) {
        let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let insert =
            format!("INSERT INTO conversations (conv_id, last_seq, updated_at) VALUES {rows}");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
        for model in chunk {
            query = query
                .bind(model.id.to_string())
                .bind(i(model.messages.len() as u64))
                .bind(model.updated_at);
        }
        query.execute(sql.pool()).await.unwrap();

        let members: Vec<(String, u64, u64)> = chunk
            .iter()
            .flat_map(|m| m.members.iter().map(|&(u, r)| (m.id.to_string(), u, r)))
            .collect();
        let rows = vec!["(?, ?, ?)"; members.len()].join(", ");
        let insert = format!("INSERT INTO conv_members (conv_id, user_id, read_seq) VALUES {rows}");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
        for (conv, user, read_seq) in members {
            query = query.bind(conv).bind(i(user)).bind(i(read_seq));
        }
        query.execute(sql.pool()).await.unwrap();

        let messages: Vec<&ChatMessage> = chunk.iter().flat_map(|m| &m.messages).collect();
        let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; messages.len()].join(", ");
        let insert = format!(
            "INSERT INTO messages (conv_id, seq, msg_id, sender_id, client_msg_id, kind, body, ref_msg_id, created_at, recalled, edited) VALUES {rows}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(insert));
        for m in messages {
            query = query
                .bind(m.conversation_id.clone())
                .bind(i(m.seq))
                .bind(i(m.msg_id))
                .bind(i(m.sender_id))
                .bind(m.client_msg_id.clone())
                .bind(i64::from(m.kind))
                .bind(m.body.clone().into_bytes())
                .bind(i(m.ref_msg_id))
                .bind(m.server_time_ms)
                .bind(i64::from(m.recalled))
                .bind(i64::from(m.edited));
        }
        query.execute(sql.pool()).await.unwrap();
    }
}

/// `user`'s listing by definition: most recently active first (ties by id), the last
/// message, and as unread the text messages after the cursor that others sent.
fn expected(models: &[Model], user: u64) -> Vec<Conversation> {
    let mut listed: Vec<(&Model, Conversation)> = models
        .iter()
        .filter_map(|model| {
            let &(_, read_seq) = model.members.iter().find(|(u, _)| *u == user)?;
            let &(other, other_read_seq) = model.members.iter().find(|(u, _)| *u != user)?;
            let direct = matches!(model.id, ConversationId::Direct(..));
            let conversation = Conversation {
                conversation_id: model.id.to_string(),
                kind: if direct {
                    ConversationKind::Direct
                } else {
                    ConversationKind::Group
                } as i32,
                peer_id: if direct { other } else { 0 },
                group_id: match model.id {
                    ConversationId::Group(group) => group,
                    ConversationId::Direct(..) => 0,
                },
                last_message: model.messages.last().cloned(),
                last_seq: model.messages.len() as u64,
                read_seq,
                unread: model
                    .messages
                    .iter()
                    .filter(|m| {
                        m.seq > read_seq
                            && m.sender_id != user
                            && m.kind == MessageKind::Text as i32
                    })
                    .count() as u64,
                peer_read_seq: if direct { other_read_seq } else { 0 },
            };
            Some((model, conversation))
        })
        .collect();
    listed.sort_by(|(a, x), (b, y)| {
        (Reverse(a.updated_at), &x.conversation_id)
            .cmp(&(Reverse(b.updated_at), &y.conversation_id))
    });
    listed.into_iter().map(|(_, c)| c).collect()
}

async fn list(client: &MessageServiceClient, user: u64) -> Vec<Conversation> {
    client
        .list_conversations_with(&Empty {}, &as_user(user))
        .await
        .unwrap()
        .conversations
}

fn assert_listing(got: &[Conversation], want: &[Conversation]) {
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(want) {
        assert_eq!(got, want);
    }
}

/// The users whose listings are checked: one with every conversation, one with a single
/// direct one, one in every group.
fn viewers() -> [u64; 3] {
    [OWNER, 2, GROUP_PEER]
}

async fn lists_every_conversation_with_its_fields(sql: Sql) {
    let models: Vec<Model> = (0..CONVERSATIONS).map(model).collect();
    seed(&sql, &models).await;
    let (_server, client) = service(&sql, &Bus::in_process(), settings());
    for user in viewers() {
        assert_listing(&list(&client, user).await, &expected(&models, user));
    }
    assert_eq!(list(&client, OWNER).await.len(), CONVERSATIONS as usize);
    assert!(list(&client, 999_999).await.is_empty());
}
on_both!(listing, lists_every_conversation_with_its_fields);

/// The most `SELECT`s a listing of `n` conversations may take: one for the list, then a
/// last-message and an unread-count lookup per chunk of 256 (the store's longest `IN` list);
/// 3 up to 256 conversations, 5 at the listing's cap of 500. It was `1 + 2n`.
fn max_selects(n: usize) -> i64 {
    1 + 2 * n.div_ceil(256).max(1) as i64
}

/// `SELECT`s run by the session, from MariaDB's own per-session counter (`SHOW` statements
/// are not counted in it), and the session's id.
async fn selects(sql: &Sql) -> (i64, i64) {
    let id: i64 = sqlx::query_scalar("SELECT CAST(CONNECTION_ID() AS SIGNED)")
        .fetch_one(sql.pool())
        .await
        .unwrap();
    let row = sqlx::query("SHOW SESSION STATUS LIKE 'Com_select'")
        .fetch_one(sql.pool())
        .await
        .unwrap();
    let value: String = row.try_get("Value").unwrap();
    (id, value.parse().unwrap())
}

/// The statements are counted by the server rather than by the store, so the count holds
/// whatever the code does and means the same before and after any change to it. The
/// counter is the session's, not the server's (other tests, of this binary or others, share
/// the server), and the pool has one connection, so the listing runs on the counted
/// session; that the session stayed the same across the call is checked, not assumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_listing_runs_a_bounded_number_of_selects() {
    let db = TestDb::mysql().await.expect("MariaDB at 127.0.0.1:3306");
    let config = DatabaseConfig {
        max_connections: 1,
        ..db.config()
    };
    let sql = Sql::connect(&config).await.expect("connect and migrate");
    let models: Vec<Model> = (0..CONVERSATIONS).map(model).collect();
    seed(&sql, &models).await;
    let (_server, client) = service(&sql, &Bus::in_process(), settings());
    for user in viewers() {
        let (session, before) = selects(&sql).await;
        let listing = list(&client, user).await;
        let (same_session, after) = selects(&sql).await;
        assert_eq!(
            session, same_session,
            "the pool changed connections mid-count"
        );
        // The counting SELECT CONNECTION_ID() of the second reading runs before its SHOW.
        let ran = after - before - 1;
        // At least the list itself: the counter does see the listing's statements.
        assert!(
            (1..=max_selects(listing.len())).contains(&ran),
            "listing {} conversations took {ran} SELECTs",
            listing.len()
        );
        assert_listing(&listing, &expected(&models, user));
    }
    sql.close().await;
    db.drop().await.expect("drop the test database");
}

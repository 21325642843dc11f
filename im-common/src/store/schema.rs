//! The schema, one migration list per dialect; [`super::Sql::connect`] applies the ones a
//! database has not seen yet, in order, and records each in `mpim_migrations`.
//!
//! Both lists describe the same tables with the same columns. Integers are `BIGINT` (read
//! back as `i64`), names `VARCHAR` in `utf8mb4_bin` on MySQL (compared byte for byte, as
//! SQLite does), message bodies `MEDIUMBLOB` / `BLOB` so any UTF-8 (NUL bytes included)
//! comes back as it went in.

/// `(version, statements)`, applied in order.
pub(crate) type Migration = (i64, &'static [&'static str]);

const MYSQL_TABLE: &str = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

macro_rules! mysql_table {
    ($body:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS ",
            $body,
            " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
        )
    };
}

pub(crate) const MYSQL: &[Migration] = &[
    (
        1,
        &[
            mysql_table!(
                "users (
                user_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                name VARCHAR(32) NOT NULL,
                password_hash VARCHAR(255) NOT NULL,
                nickname VARCHAR(255) NOT NULL,
                avatar VARCHAR(1024) NOT NULL DEFAULT '',
                bio TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                UNIQUE KEY users_name (name)
            )"
            ),
            mysql_table!(
                "sessions (
                session_id VARCHAR(64) NOT NULL PRIMARY KEY,
                user_id BIGINT NOT NULL,
                device_id VARCHAR(64) NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                revoked_at BIGINT NULL,
                KEY sessions_user (user_id)
            )"
            ),
            mysql_table!(
                "friend_requests (
                request_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                from_user BIGINT NOT NULL,
                to_user BIGINT NOT NULL,
                message VARCHAR(255) NOT NULL,
                state BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                KEY friend_requests_to (to_user, state),
                KEY friend_requests_from (from_user, to_user)
            )"
            ),
            mysql_table!(
                "friends (
                user_id BIGINT NOT NULL,
                friend_id BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (user_id, friend_id)
            )"
            ),
            mysql_table!(
                "blocks (
                user_id BIGINT NOT NULL,
                blocked_id BIGINT NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (user_id, blocked_id)
            )"
            ),
            mysql_table!(
                "chat_groups (
                group_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                name VARCHAR(255) NOT NULL,
                description TEXT NOT NULL,
                owner_id BIGINT NOT NULL,
                join_policy BIGINT NOT NULL,
                mute_all BIGINT NOT NULL DEFAULT 0,
                created_at BIGINT NOT NULL,
                dismissed_at BIGINT NULL
            )"
            ),
            mysql_table!(
                "group_members (
                group_id BIGINT NOT NULL,
                user_id BIGINT NOT NULL,
                role BIGINT NOT NULL,
                muted_until BIGINT NOT NULL DEFAULT 0,
                joined_at BIGINT NOT NULL,
                PRIMARY KEY (group_id, user_id),
                KEY group_members_user (user_id)
            )"
            ),
            mysql_table!(
                "group_join_requests (
                group_id BIGINT NOT NULL,
                user_id BIGINT NOT NULL,
                message VARCHAR(255) NOT NULL,
                created_at BIGINT NOT NULL,
                PRIMARY KEY (group_id, user_id)
            )"
            ),
            mysql_table!(
                "conversations (
                conv_id VARCHAR(48) NOT NULL PRIMARY KEY,
                last_seq BIGINT NOT NULL,
                updated_at BIGINT NOT NULL
            )"
            ),
            mysql_table!(
                "conv_members (
                conv_id VARCHAR(48) NOT NULL,
                user_id BIGINT NOT NULL,
                read_seq BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (conv_id, user_id),
                KEY conv_members_user (user_id)
            )"
            ),
            mysql_table!(
                "messages (
                conv_id VARCHAR(48) NOT NULL,
                seq BIGINT NOT NULL,
                msg_id BIGINT NOT NULL,
                sender_id BIGINT NOT NULL,
                client_msg_id VARCHAR(64) NOT NULL,
                kind BIGINT NOT NULL,
                body MEDIUMBLOB NOT NULL,
                ref_msg_id BIGINT NOT NULL DEFAULT 0,
                created_at BIGINT NOT NULL,
                recalled BIGINT NOT NULL DEFAULT 0,
                edited BIGINT NOT NULL DEFAULT 0,
                PRIMARY KEY (conv_id, seq),
                UNIQUE KEY messages_msg_id (msg_id),
                UNIQUE KEY messages_client (sender_id, client_msg_id)
            )"
            ),
        ],
    ),
    (
        2,
        &[
            // One row the services with a replica stamp on the primary every second and read
            // back from the replica: how far behind it is (`super::replica`).
            mysql_table!(
                "replica_heartbeat (
                    id BIGINT NOT NULL PRIMARY KEY,
                    beat_ms BIGINT NOT NULL
                )"
            ),
            "INSERT IGNORE INTO replica_heartbeat (id, beat_ms) VALUES (1, 0)",
        ],
    ),
];

pub(crate) const SQLITE: &[Migration] = &[
    (
        1,
        &[
            "CREATE TABLE IF NOT EXISTS users (
            user_id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            nickname TEXT NOT NULL,
            avatar TEXT NOT NULL DEFAULT '',
            bio TEXT NOT NULL,
            created_at INTEGER NOT NULL
        )",
            "CREATE TABLE IF NOT EXISTS sessions (
            session_id TEXT NOT NULL PRIMARY KEY,
            user_id INTEGER NOT NULL,
            device_id TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            revoked_at INTEGER NULL
        )",
            "CREATE INDEX IF NOT EXISTS sessions_user ON sessions (user_id)",
            "CREATE TABLE IF NOT EXISTS friend_requests (
            request_id INTEGER PRIMARY KEY AUTOINCREMENT,
            from_user INTEGER NOT NULL,
            to_user INTEGER NOT NULL,
            message TEXT NOT NULL,
            state INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        )",
            "CREATE INDEX IF NOT EXISTS friend_requests_to ON friend_requests (to_user, state)",
            "CREATE INDEX IF NOT EXISTS friend_requests_from ON friend_requests (from_user, to_user)",
            "CREATE TABLE IF NOT EXISTS friends (
            user_id INTEGER NOT NULL,
            friend_id INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (user_id, friend_id)
        )",
            "CREATE TABLE IF NOT EXISTS blocks (
            user_id INTEGER NOT NULL,
            blocked_id INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (user_id, blocked_id)
        )",
            "CREATE TABLE IF NOT EXISTS chat_groups (
            group_id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            description TEXT NOT NULL,
            owner_id INTEGER NOT NULL,
            join_policy INTEGER NOT NULL,
            mute_all INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            dismissed_at INTEGER NULL
        )",
            "CREATE TABLE IF NOT EXISTS group_members (
            group_id INTEGER NOT NULL,
            user_id INTEGER NOT NULL,
            role INTEGER NOT NULL,
            muted_until INTEGER NOT NULL DEFAULT 0,
            joined_at INTEGER NOT NULL,
            PRIMARY KEY (group_id, user_id)
        )",
            "CREATE INDEX IF NOT EXISTS group_members_user ON group_members (user_id)",
            "CREATE TABLE IF NOT EXISTS group_join_requests (
            group_id INTEGER NOT NULL,
            user_id INTEGER NOT NULL,
            message TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (group_id, user_id)
        )",
            "CREATE TABLE IF NOT EXISTS conversations (
            conv_id TEXT NOT NULL PRIMARY KEY,
            last_seq INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        )",
            "CREATE TABLE IF NOT EXISTS conv_members (
            conv_id TEXT NOT NULL,
            user_id INTEGER NOT NULL,
            read_seq INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (conv_id, user_id)
        )",
            "CREATE INDEX IF NOT EXISTS conv_members_user ON conv_members (user_id)",
            "CREATE TABLE IF NOT EXISTS messages (
            conv_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            msg_id INTEGER NOT NULL UNIQUE,
            sender_id INTEGER NOT NULL,
            client_msg_id TEXT NOT NULL,
            kind INTEGER NOT NULL,
            body BLOB NOT NULL,
            ref_msg_id INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            recalled INTEGER NOT NULL DEFAULT 0,
            edited INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (conv_id, seq),
            UNIQUE (sender_id, client_msg_id)
        )",
        ],
    ),
    (
        2,
        &[
            "CREATE TABLE IF NOT EXISTS replica_heartbeat (
                id INTEGER NOT NULL PRIMARY KEY,
                beat_ms INTEGER NOT NULL
            )",
            "INSERT OR IGNORE INTO replica_heartbeat (id, beat_ms) VALUES (1, 0)",
        ],
    ),
];

/// The table that records applied migrations, per dialect.
pub(crate) fn migrations_table(mysql: bool) -> String {
    if mysql {
        format!(
            "CREATE TABLE IF NOT EXISTS mpim_migrations (version BIGINT NOT NULL PRIMARY KEY, applied_at BIGINT NOT NULL) {MYSQL_TABLE}"
        )
    } else {
        "CREATE TABLE IF NOT EXISTS mpim_migrations (version INTEGER NOT NULL PRIMARY KEY, applied_at INTEGER NOT NULL)".to_owned()
    }
}

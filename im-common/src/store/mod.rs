//! Relational storage through sqlx: MySQL/MariaDB in production, SQLite embedded.
//!
//! [`Sql`] is one pool (plus an optional read replica) on either engine, with the schema
//! migrated at connect. Each store is a trait the services program against; `Sql`
//! implements every one of them for both engines, writing portable SQL and asking
//! [`Dialect`] for the few statements that differ. The same test suite runs against both.
//! Reads that tolerate replication lag go through [`Sql::read`]: to the replica when one is
//! configured and answering, else to the primary ([`replica`]).
//!
//! All SQL is parameterised: values only ever travel as bind parameters.

pub mod groups;
pub mod messages;
pub mod replica;
mod schema;
pub mod users;
mod values;

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions, Executor};
use tracing::info;

use crate::config::DatabaseConfig;
use crate::error::StoreError;
use crate::ids::now_ms;
use replica::Replica;

/// The SQL engine behind a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// MySQL or MariaDB.
    MySql,
    /// SQLite.
    Sqlite,
}

impl Dialect {
    /// The engine a URL names.
    ///
    /// # Errors
    /// [`StoreError::Precondition`] for any other scheme.
    pub fn of_url(url: &str) -> Result<Dialect, StoreError> {
        if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Ok(Dialect::MySql)
        } else if url.starts_with("sqlite:") {
            Ok(Dialect::Sqlite)
        } else {
            Err(StoreError::Precondition(format!(
                "database url must start with mysql:// or sqlite://, not {:?}",
                url.split(':').next().unwrap_or_default()
            )))
        }
    }

    /// `INSERT` that skips rows whose unique key is taken.
    pub fn insert_ignore(self) -> &'static str {
        match self {
            Dialect::MySql => "INSERT IGNORE",
            Dialect::Sqlite => "INSERT OR IGNORE",
        }
    }

    /// The statement that begins a write transaction which locks at once (SQLite takes its
    /// write lock at the first write otherwise, and can then fail with "database is locked"
    /// instead of waiting).
    pub fn begin_write(self) -> &'static str {
        match self {
            Dialect::MySql => "BEGIN",
            Dialect::Sqlite => "BEGIN IMMEDIATE",
        }
    }
}

/// A connection pool on MySQL/MariaDB or SQLite, with an optional read replica.
#[derive(Debug, Clone)]
pub struct Sql {
    pool: AnyPool,
    replica: Option<Arc<Replica>>,
    dialect: Dialect,
    /// Message commits that ran again after a conflict, since connecting.
    conflicts: Arc<std::sync::atomic::AtomicU64>,
    /// The longest statement the server takes (MySQL's `max_allowed_packet` when
    /// connecting; unbounded on SQLite).
    max_statement: usize,
}

impl Sql {
    /// Connects to `config.url`, creating an SQLite file and its directory when missing, and
    /// applies the migrations the database lacks. The replica (`config.replica_url`) is
    /// connected on first use, so a replica that is down does not keep a service from
    /// starting (see [`replica`]).
    ///
    /// # Errors
    /// [`StoreError::Database`] when the database cannot be reached or migrated.
    pub async fn connect(config: &DatabaseConfig) -> Result<Sql, StoreError> {
        sqlx::any::install_default_drivers();
        let dialect = Dialect::of_url(&config.url)?;
        let pool = open(&config.url, dialect, config.max_connections).await?;
        let replica = match &config.replica_url {
            Some(url) => Some(Arc::new(Replica::new(open_replica(
                url,
                config.max_connections,
            )?))),
            None => None,
        };
        let sql = Sql {
            pool,
            replica,
            dialect,
            conflicts: Arc::default(),
            max_statement: usize::MAX,
        };
        sql.migrate().await?;
        let sql = Sql {
            max_statement: sql.read_max_statement().await?,
            ..sql
        };
        if let Some(replica) = &sql.replica
            && config.replica_max_lag_ms > 0
        {
            Replica::watch(
                replica,
                sql.pool.clone(),
                Duration::from_millis(config.replica_max_lag_ms),
            );
        }
        Ok(sql)
    }

    /// The primary pool: every write, and every read that must see the latest writes.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Runs a read that tolerates replication lag: on the replica when one is configured and
    /// answering, else on the primary (a read that fails on the replica runs again on the
    /// primary; see [`replica`]). `read` gets the pool to run on and may be called twice.
    ///
    /// # Errors
    /// The error of the read on the primary.
    pub async fn read<T, F, Fut>(&self, read: F) -> Result<T, StoreError>
    where
        F: Fn(AnyPool) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        match &self.replica {
            Some(replica) => replica.read(&self.pool, read).await,
            None => read(self.pool.clone()).await,
        }
    }

    /// Begins a write transaction on the primary that takes the write lock at once on SQLite
    /// (`BEGIN IMMEDIATE`), so that a read-then-write transaction waits for other writers
    /// instead of failing with "database is locked". Dropping it uncommitted rolls back.
    ///
    /// # Errors
    /// [`StoreError::Database`] when no connection can be had.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.dialect {
            Dialect::MySql => self.pool.begin().await?,
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
        })
    }

    /// Message commits (of this pool and its clones) that conflicted with a concurrent one
    /// (a deadlock, a lock wait that timed out, a client message id taken meanwhile) and ran
    /// again, since connecting. Also counted in `mpim_store_commit_conflicts_total`.
    pub fn commit_conflicts(&self) -> u64 {
        self.conflicts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The longest statement the server takes, in bytes.
    pub(crate) fn max_statement(&self) -> usize {
        self.max_statement
    }

    async fn read_max_statement(&self) -> Result<usize, StoreError> {
        if self.dialect != Dialect::MySql {
            return Ok(usize::MAX);
        }
        let bytes: i64 = sqlx::query_scalar("SELECT CAST(@@max_allowed_packet AS SIGNED)")
            .fetch_one(&self.pool)
            .await?;
        Ok(usize::try_from(bytes).unwrap_or(usize::MAX))
    }

    /// The engine.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Closes the pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
        if let Some(replica) = &self.replica {
            replica.pool().close().await;
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let (list, mysql) = match self.dialect {
            Dialect::MySql => (schema::MYSQL, true),
            Dialect::Sqlite => (schema::SQLITE, false),
        };
        self.pool
            .execute(sqlx::AssertSqlSafe(schema::migrations_table(mysql)))
            .await?;
        for (version, statements) in list {
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT version FROM mpim_migrations WHERE version = ?")
                    .bind(*version)
                    .fetch_optional(&self.pool)
                    .await?;
            if applied.is_some() {
                continue;
            }
            // DDL commits implicitly on MySQL, so each statement is idempotent instead
            // (IF NOT EXISTS) and the version is recorded last.
            for statement in *statements {
                self.pool.execute(*statement).await?;
            }
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "{} INTO mpim_migrations (version, applied_at) VALUES (?, ?)",
                self.dialect.insert_ignore()
            )))
            .bind(*version)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
            info!(version, "database migrated");
        }
        Ok(())
    }
}

async fn open(url: &str, dialect: Dialect, max: u32) -> Result<AnyPool, StoreError> {
    let mut url = url.to_owned();
    if dialect == Dialect::Sqlite {
        url = sqlite_url(&url)?;
    }
    let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
    let mut pool = AnyPoolOptions::new()
        .max_connections(max.max(1))
        .acquire_timeout(Duration::from_secs(10));
    if dialect == Dialect::Sqlite {
        // WAL lets readers run beside the one writer; waiting on a busy database beats
        // failing with "database is locked". A 16 MiB page cache per connection (the default
        // is 2 MiB) keeps the indexes that every commit touches off the file. A connection
        // to a file does not go stale, so it is not pinged (a round trip to its thread)
        // each time it is taken from the pool.
        pool = pool.test_before_acquire(false).after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = OFF; PRAGMA cache_size = -16384")
                    .await?;
                Ok(())
            })
        });
    }
    Ok(pool.connect_with(options).await?)
}

/// The replica's pool, connecting on first use, with a short wait for a connection: a read
/// that cannot have one soon goes to the primary.
fn open_replica(url: &str, max: u32) -> Result<AnyPool, StoreError> {
    if Dialect::of_url(url)? != Dialect::MySql {
        return Err(StoreError::Precondition(
            "replica_url must be a mysql:// URL (SQLite has no replicas)".to_owned(),
        ));
    }
    let options = AnyConnectOptions::from_str(url)?.disable_statement_logging();
    Ok(AnyPoolOptions::new()
        .max_connections(max.max(1))
        .acquire_timeout(replica::ACQUIRE_TIMEOUT)
        .connect_lazy_with(options))
}

/// An SQLite URL that creates its file (and the file's directory) when missing. In-memory
/// databases are shared between the pool's connections.
fn sqlite_url(url: &str) -> Result<String, StoreError> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path == ":memory:" || path.is_empty() {
        return Err(StoreError::Precondition(
            "use a file for SQLite (sqlite://path/to/mpim.db); an in-memory database is \
             private to one connection"
                .to_owned(),
        ));
    }
    if let Some(dir) = std::path::Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|err| {
                StoreError::Precondition(format!("cannot create {}: {err}", dir.display()))
            })?;
        }
    }
    let query = if query.contains("mode=") {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// Throwaway databases for tests: each gets its own, so runs never collide.
pub mod testing {
    use std::sync::atomic::{AtomicU32, Ordering};

    use sqlx::Connection;

    use super::*;

    /// The MySQL server tests use: `MPIM_TEST_MYSQL` is not read (the config loader owns
    /// the `MPIM_` prefix); `TEST_MYSQL_URL`, default `mysql://root@127.0.0.1:3306`.
    pub fn mysql_server() -> String {
        std::env::var("TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
    }

    /// A database that exists only for one test; [`TestDb::drop`] removes it.
    #[derive(Debug)]
    pub struct TestDb {
        /// The URL to connect with.
        pub url: String,
        name: String,
        dialect: Dialect,
        dir: Option<std::path::PathBuf>,
    }

    static NEXT: AtomicU32 = AtomicU32::new(0);

    /// Which engine a test scenario runs on.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Engine {
        /// A fresh SQLite file.
        Sqlite,
        /// A fresh database on the MySQL test server.
        MySql,
    }

    /// Runs `scenario` on a fresh, migrated database of `engine`, then drops the database.
    ///
    /// # Panics
    /// When the database cannot be made, reached or dropped.
    pub async fn with_db<F, Fut>(engine: Engine, scenario: F)
    where
        F: FnOnce(Sql) -> Fut,
        Fut: Future<Output = ()>,
    {
        let db = match engine {
            Engine::Sqlite => TestDb::sqlite(),
            Engine::MySql => TestDb::mysql().await.expect("MariaDB at 127.0.0.1:3306"),
        };
        let sql = Sql::connect(&db.config())
            .await
            .expect("connect and migrate");
        scenario(sql.clone()).await;
        sql.close().await;
        db.drop().await.expect("drop the test database");
    }

    fn unique(prefix: &str) -> String {
        format!(
            "{prefix}_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        )
    }

    impl TestDb {
        /// A new, empty database on the MySQL test server.
        ///
        /// # Errors
        /// When the server cannot be reached.
        pub async fn mysql() -> Result<TestDb, StoreError> {
            sqlx::any::install_default_drivers();
            let name = unique("mpim_test");
            let server = mysql_server();
            let mut conn = sqlx::AnyConnection::connect(&server).await?;
            // The name is generated here, never input: safe to format into the statement.
            let create =
                format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin");
            conn.execute(sqlx::AssertSqlSafe(create)).await?;
            conn.close().await?;
            Ok(TestDb {
                url: format!("{}/{name}", server.trim_end_matches('/')),
                name,
                dialect: Dialect::MySql,
                dir: None,
            })
        }

        /// A new SQLite database in a fresh temporary directory.
        pub fn sqlite() -> TestDb {
            let name = unique("mpim_test");
            let dir = std::env::temp_dir().join(&name);
            TestDb {
                url: format!("sqlite://{}/mpim.db", dir.display()),
                name,
                dialect: Dialect::Sqlite,
                dir: Some(dir),
            }
        }

        /// The database config that points at this database.
        pub fn config(&self) -> DatabaseConfig {
            DatabaseConfig {
                url: self.url.clone(),
                ..DatabaseConfig::default()
            }
        }

        /// Removes the database.
        ///
        /// # Errors
        /// When the server cannot be reached.
        pub async fn drop(self) -> Result<(), StoreError> {
            match self.dialect {
                Dialect::MySql => {
                    let mut conn = sqlx::AnyConnection::connect(&mysql_server()).await?;
                    let drop = format!("DROP DATABASE IF EXISTS `{}`", self.name);
                    conn.execute(sqlx::AssertSqlSafe(drop)).await?;
                    conn.close().await?;
                }
                Dialect::Sqlite => {
                    if let Some(dir) = &self.dir {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                }
            }
            Ok(())
        }
    }
}

/// One test per engine for an `async fn scenario(sql: Sql)`: `on_both!(scenario)` makes the
/// module `scenario` with tests `sqlite` and `mysql`; `on_both!(module, scenario)` names the
/// module.
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        $crate::on_both!($name, $name);
    };
    ($module:ident, $scenario:ident) => {
        mod $module {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $crate::store::testing::with_db(
                    $crate::store::testing::Engine::Sqlite,
                    super::$scenario,
                )
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                $crate::store::testing::with_db(
                    $crate::store::testing::Engine::MySql,
                    super::$scenario,
                )
                .await;
            }
        }
    };
}

//! Configuration: one TOML file per process, `MPIM_*` environment overrides, then flags.
//!
//! [`load`] reads the file (or nothing: every key has a default), applies each environment
//! variable `MPIM_<KEY>` (nested keys joined by `__`: `MPIM_DATABASE__URL` sets
//! `database.url`), then the overrides the binary's flags give, and deserializes the result.
//! Unknown keys and wrong values are errors that name the key (`database.max_connections:
//! invalid type: string "x", expected u32`).
//!
//! The sections every service shares live here: [`ServerConfig`], [`DiscoveryConfig`],
//! [`DatabaseConfig`], [`RedisConfig`] and [`LogConfig`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The command line every service binary takes (flatten it into the binary's parser).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// TOML configuration file (every key has a default).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on (overrides server.listen).
    #[arg(long)]
    pub listen: Option<String>,
}

impl Args {
    /// The configuration these arguments name: [`load`] with `--listen` as an override.
    ///
    /// # Errors
    /// As [`load`].
    pub fn load<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let overrides: Vec<(&str, String)> = self
            .listen
            .iter()
            .map(|listen| ("server.listen", listen.clone()))
            .collect();
        load(self.config.as_deref(), &overrides)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it returned.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML, or an override is not a valid value.
    #[error("{origin}: {message}")]
    Syntax {
        /// The file or environment variable.
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// A key is unknown or its value is wrong.
    #[error("{key}: {message}")]
    Invalid {
        /// The key, dotted (`database.url`).
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Loads `T` from `file` (when given), the `MPIM_*` environment and `overrides` (dotted key,
/// TOML value or bare string), in that order of increasing precedence.
///
/// # Errors
/// [`ConfigError`] naming the file, variable or key at fault.
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    overrides: &[(&str, String)],
) -> Result<T, ConfigError> {
    let mut root = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            text.parse::<toml::Table>()
                .map_err(|err| ConfigError::Syntax {
                    origin: path.display().to_string(),
                    message: err.to_string(),
                })?
        }
        None => toml::Table::new(),
    };
    let env: BTreeMap<String, String> = std::env::vars()
        .filter_map(|(name, value)| {
            let key = name.strip_prefix("MPIM_")?;
            Some((key.to_ascii_lowercase().replace("__", "."), value))
        })
        .collect();
    for (key, value) in env
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .chain(overrides.iter().cloned())
    {
        set(&mut root, key, parse_value(&value))?;
    }
    let value = toml::Value::Table(root);
    serde_path_to_error::deserialize(value).map_err(|err| ConfigError::Invalid {
        key: err.path().to_string(),
        // The key leads the message already; the parser's own "in `table`" line would
        // only repeat it.
        message: err
            .inner()
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    })
}

/// A TOML value as written (`42`, `true`, `["a", "b"]`), or else the text itself.
fn parse_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

fn set(root: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), ConfigError> {
    let mut parts = key.split('.').peekable();
    let mut table = root;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            table.insert(part.to_owned(), value);
            return Ok(());
        }
        let entry = table
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| ConfigError::Invalid {
            key: key.to_owned(),
            message: format!("{part} is not a table"),
        })?;
    }
    Ok(())
}

/// Where a service listens and how it stops.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the RPC server binds. Default: the service's own port on 127.0.0.1.
    pub listen: String,
    /// Address other processes reach this one at, registered in discovery. Default: the
    /// bound address (with an unspecified IP replaced by this host's outgoing one).
    pub advertise: Option<String>,
    /// Address of the Prometheus `/metrics` endpoint. Default: the RPC port + 1000 on the
    /// same IP; `"off"` disables it.
    pub metrics_listen: Option<String>,
    /// How long calls in flight may finish after a shutdown signal, in ms. Default 10000.
    pub grace_period_ms: u64,
}

impl ServerConfig {
    /// The defaults for a service whose port is `port`.
    pub fn on_port(port: u16) -> ServerConfig {
        ServerConfig {
            listen: format!("127.0.0.1:{port}"),
            advertise: None,
            metrics_listen: None,
            grace_period_ms: 10_000,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig::on_port(0)
    }
}

/// How services find each other.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// ZooKeeper hosts (`127.0.0.1:2181,10.0.0.2:2181`). Default: none, so the static list
    /// below is used and nothing is registered.
    pub zookeeper: Option<String>,
    /// ZooKeeper root. Default `/mprpc`.
    pub root: String,
    /// ZooKeeper session timeout in ms. Default 10000.
    pub session_timeout_ms: u64,
    /// Without ZooKeeper: addresses per service (`"mpim.UserService" = ["127.0.0.1:6101"]`).
    /// Default: each service on its default port on 127.0.0.1.
    #[serde(rename = "static")]
    pub fixed: BTreeMap<String, Vec<String>>,
    /// A file holding the cluster's ZooKeeper credential, `user:password` on one line
    /// (docs/security.md). Default: none, and the registry is open to anyone who reaches
    /// ZooKeeper.
    pub credential_file: Option<PathBuf>,
}

impl Default for DiscoveryConfig {
    fn default() -> DiscoveryConfig {
        DiscoveryConfig {
            zookeeper: None,
            root: "/mprpc".to_owned(),
            session_timeout_ms: 10_000,
            fixed: BTreeMap::new(),
            credential_file: None,
        }
    }
}

/// Mutual TLS between MPIM's processes (docs/security.md).
///
/// With `cert`, `key` and `ca` set, the service's RPC port speaks only TLS and admits only
/// peers whose certificate the cluster CA signed; the process dials the other services over
/// TLS with the same certificate, and checks that each instance holds the certificate of the
/// service it looked up. Without them, RPC is plaintext, which a service allows only on a
/// loopback address unless `insecure` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// This process's certificate chain, PEM (e.g. `certs/user.pem`). Default: none.
    pub cert: Option<PathBuf>,
    /// Its private key, PEM. Default: none.
    pub key: Option<PathBuf>,
    /// The cluster CA's certificate(s), PEM: the only issuer of peers' certificates.
    /// Default: none.
    pub ca: Option<PathBuf>,
    /// How often the three files are checked for a new version, in ms; a new certificate
    /// is used for connections made from then on. Default 10000.
    pub reload_interval_ms: u64,
    /// Allow plaintext RPC on an address other than loopback, trusting whoever reaches it.
    /// Default false.
    pub insecure: bool,
}

impl Default for TlsConfig {
    fn default() -> TlsConfig {
        TlsConfig {
            cert: None,
            key: None,
            ca: None,
            reload_interval_ms: 10_000,
            insecure: false,
        }
    }
}

impl TlsConfig {
    /// The three files, when TLS is configured.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] when some but not all of `cert`, `key` and `ca` are set.
    pub fn files(&self) -> Result<Option<(&Path, &Path, &Path)>, ConfigError> {
        match (&self.cert, &self.key, &self.ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some((cert, key, ca))),
            (None, None, None) => Ok(None),
            _ => Err(ConfigError::Invalid {
                key: "tls".to_owned(),
                message: "cert, key and ca go together: set all three or none".to_owned(),
            }),
        }
    }
}

/// The relational database.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `mysql://user:password@host:3306/db` or `sqlite://path/to/file.db`. Default
    /// `sqlite://mpim-data/mpim.db` (created when missing).
    pub url: String,
    /// A MySQL/MariaDB read replica, for reads that tolerate lag (profiles, search, member
    /// lists); never used for message sync. While it fails, those reads go to the primary.
    /// Default: none.
    pub replica_url: Option<String>,
    /// How far behind the primary the replica may be, in ms, before those reads go to the
    /// primary until it has caught up; measured every second through a heartbeat row the
    /// services stamp on the primary. 0: not measured. Default 10000.
    pub replica_max_lag_ms: u64,
    /// Connections in the pool. Default 16.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> DatabaseConfig {
        DatabaseConfig {
            url: "sqlite://mpim-data/mpim.db".to_owned(),
            replica_url: None,
            replica_max_lag_ms: 10_000,
            max_connections: 16,
        }
    }
}

/// Routes, streams, pub/sub and cache.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RedisSection")]
pub struct RedisConfig {
    /// One server: `redis://127.0.0.1:6379/0`. Default: none, which keeps all of it inside
    /// this process (only right when every service runs in one process, as in `mpim`) unless
    /// `cluster` is set.
    pub url: Option<String>,
    /// A Redis Cluster instead of one server: some of its nodes
    /// (`["redis://10.0.0.1:7001", "redis://10.0.0.2:7002"]`; the client finds the rest). A
    /// string of comma-separated URLs is read as the list, for `MPIM_REDIS__CLUSTER`.
    /// Default: none. Either this or `url`, not both.
    pub cluster: Vec<String>,
    /// Put before every key and channel, so that deployments sharing one Redis never see
    /// each other's data; every process of a deployment must use the same. Must not
    /// contain `{`. Default: empty.
    pub prefix: String,
}

/// `[redis]` as written, checked into a [`RedisConfig`].
#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RedisSection {
    url: Option<String>,
    #[serde(deserialize_with = "urls")]
    cluster: Vec<String>,
    prefix: String,
}

impl TryFrom<RedisSection> for RedisConfig {
    type Error = String;

    fn try_from(section: RedisSection) -> Result<RedisConfig, String> {
        if section.url.is_some() && !section.cluster.is_empty() {
            return Err("url and cluster are both set; a deployment uses one or the other".into());
        }
        if section.prefix.contains('{') {
            return Err("prefix must not contain '{' (it would move the cluster hash tags)".into());
        }
        Ok(RedisConfig {
            url: section.url,
            cluster: section.cluster,
            prefix: section.prefix,
        })
    }
}

/// A list of URLs, given as a list or as one string of comma-separated URLs.
fn urls<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        List(Vec<String>),
        Joined(String),
    }
    Ok(match Urls::deserialize(deserializer)? {
        Urls::List(urls) => urls,
        Urls::Joined(text) => text
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `im_message=debug,info`). Default `info`; `RUST_LOG`
    /// wins when set.
    pub level: String,
    /// Directory for rotating log files, besides stderr. Default: none (stderr only).
    pub dir: Option<PathBuf>,
    /// `daily`, `hourly` or `never`. Default `daily`.
    pub rotation: String,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".to_owned(),
            dir: None,
            rotation: "daily".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        database: DatabaseConfig,
        limit: u32,
    }

    #[test]
    fn overrides_and_errors_name_the_key() {
        let loaded: Sample = load(
            None,
            &[
                ("database.url", "mysql://x/y".into()),
                ("limit", "7".into()),
            ],
        )
        .unwrap();
        assert_eq!(loaded.database.url, "mysql://x/y");
        assert_eq!(loaded.database.max_connections, 16);
        assert_eq!(loaded.limit, 7);

        let err = load::<Sample>(None, &[("database.max_connections", "many".into())]).unwrap_err();
        assert!(
            err.to_string().starts_with("database.max_connections: "),
            "{err}"
        );
        let err = load::<Sample>(None, &[("databse.url", "x".into())]).unwrap_err();
        assert!(err.to_string().contains("databse"), "{err}");
    }

    #[derive(Debug, Deserialize, Default)]
    #[serde(default, deny_unknown_fields)]
    struct WithRedis {
        redis: RedisConfig,
    }

    #[test]
    fn redis_cluster_nodes_come_as_a_list_or_a_string() {
        let listed: WithRedis = load(
            None,
            &[(
                "redis.cluster",
                r#"["redis://127.0.0.1:7001", "redis://127.0.0.1:7002"]"#.into(),
            )],
        )
        .unwrap();
        let joined: WithRedis = load(
            None,
            &[(
                "redis.cluster",
                "redis://127.0.0.1:7001, redis://127.0.0.1:7002".into(),
            )],
        )
        .unwrap();
        let expected = ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002"];
        assert_eq!(listed.redis.cluster, expected);
        assert_eq!(joined.redis.cluster, expected);
        assert_eq!(listed.redis.url, None);
        let default: WithRedis = load(None, &[]).unwrap();
        assert!(default.redis.cluster.is_empty() && default.redis.url.is_none());
    }

    #[test]
    fn redis_mistakes_name_the_section() {
        let both = [
            ("redis.url", "redis://127.0.0.1:6379".to_owned()),
            ("redis.cluster", "redis://127.0.0.1:7001".to_owned()),
        ];
        let err = load::<WithRedis>(None, &both).unwrap_err();
        assert!(err.to_string().starts_with("redis: "), "{err}");
        assert!(err.to_string().contains("both"), "{err}");
        let err = load::<WithRedis>(None, &[("redis.prefix", "a{b}:".into())]).unwrap_err();
        assert!(err.to_string().contains("prefix"), "{err}");
        let err = load::<WithRedis>(None, &[("redis.clustr", "x".into())]).unwrap_err();
        assert!(err.to_string().contains("clustr"), "{err}");
        let err = load::<WithRedis>(None, &[("redis.cluster", "7".into())]).unwrap_err();
        assert!(err.to_string().starts_with("redis"), "{err}");
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = load::<Sample>(Some(Path::new("/nonexistent/x.toml")), &[]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.toml"), "{err}");
    }
}

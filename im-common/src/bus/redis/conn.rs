//! Connections to either kind of Redis deployment: one server, or a Redis Cluster.
//!
//! The bus is written once, against [`Conn`]: it implements the crate's `ConnectionLike`, so
//! `cmd.query_async(&mut conn)` runs a command on either. On a cluster the `redis` crate's
//! cluster connection sends each command to the master that owns its key's hash slot and
//! follows `MOVED`/`ASK` redirections (refreshing its slot map) on its own. Three things
//! differ on a cluster, and each has one place here:
//!
//! - **Pipelines.** The crate's async cluster connection sends a pipeline to one node and
//!   refuses one whose keys span slots (`CROSSSLOT`; redis 1.2 does not split them). A
//!   [`Batch`] is the bus's non-atomic pipeline: one pipeline on a single server; on a
//!   cluster, one pipeline per hash slot, up to 64 in flight at once. Commands of one slot
//!   keep their order; commands of different slots may run in any order, and nothing in the
//!   bus relies on that order.
//! - **Dedicated connections** ([`Server::dedicated`]), for blocking stream reads: a
//!   multiplexed connection of their own on a single server; on a cluster, a cluster
//!   connection of their own, which routes the read to the master owning the stream (and
//!   re-routes after a failover or a resharding like any other command).
//! - **Scanning every key** ([`Conn::masters`]): `SCAN` cursors belong to one node, so on a
//!   cluster it runs on each master in turn.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo, Slot};
use redis::{
    AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture,
    RedisResult, Value,
};

/// Where the bus's Redis is, and how to open connections to it.
#[derive(Clone)]
pub(super) enum Server {
    /// One server.
    Single(Client),
    /// A Redis Cluster.
    Cluster(Box<Cluster>),
}

/// A Redis Cluster, known by some of its nodes.
#[derive(Clone)]
pub(super) struct Cluster {
    /// For the shared connection: every response within the response timeout.
    shared: ClusterClient,
    /// For dedicated connections: no response timeout (a blocking read waits).
    dedicated: ClusterClient,
    /// The given nodes one by one, for pub/sub.
    nodes: Vec<Client>,
}

impl Server {
    /// A single server at `url`.
    pub(super) fn single(url: &str) -> RedisResult<Server> {
        Ok(Server::Single(Client::open(url)?))
    }

    /// A cluster reached through any of `nodes` (at least one).
    pub(super) fn cluster(nodes: &[String], connect: Duration) -> RedisResult<Server> {
        if nodes.is_empty() {
            return Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a Redis Cluster needs at least one node",
            )));
        }
        let builder = || ClusterClientBuilder::new(nodes.to_vec()).connection_timeout(connect);
        Ok(Server::Cluster(Box::new(Cluster {
            shared: builder()
                .response_timeout(super::RESPONSE_TIMEOUT)
                .build()?,
            dedicated: builder().build()?,
            nodes: nodes
                .iter()
                .map(|url| Client::open(url.as_str()))
                .collect::<RedisResult<_>>()?,
        })))
    }

    /// The connection every command shares: multiplexed, reconnecting, with a response
    /// timeout.
    pub(super) async fn shared(&self) -> RedisResult<Conn> {
        match self {
            Server::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(super::RESPONSE_TIMEOUT))
                    .set_connection_timeout(Some(super::CONNECT_TIMEOUT));
                let manager = client.get_connection_manager_with_config(config).await?;
                Ok(Conn::Manager(manager))
            }
            Server::Cluster(cluster) => {
                Ok(Conn::Cluster(cluster.shared.get_async_connection().await?))
            }
        }
    }

    /// A new connection of its own, without a response timeout, for a blocking command.
    pub(super) async fn dedicated(&self) -> RedisResult<Conn> {
        match self {
            Server::Single(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(super::CONNECT_TIMEOUT))
                    .set_response_timeout(None);
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                Ok(Conn::Multiplexed(conn))
            }
            Server::Cluster(cluster) => {
                let config = ClusterConfig::new().set_connection_timeout(super::CONNECT_TIMEOUT);
                let conn = cluster
                    .dedicated
                    .get_async_connection_with_config(config)
                    .await?;
                Ok(Conn::Cluster(conn))
            }
        }
    }

    /// The servers a pub/sub connection may use, in the order to try them. Any node of a
    /// cluster will do: a `PUBLISH` on one node reaches the subscribers of every node.
    pub(super) fn pubsub_nodes(&self) -> Vec<Client> {
        match self {
            Server::Single(client) => vec![client.clone()],
            Server::Cluster(cluster) => cluster.nodes.clone(),
        }
    }
}

/// A connection to the bus's Redis, of whichever kind.
#[derive(Clone)]
pub(super) enum Conn {
    /// The shared connection to a single server.
    Manager(ConnectionManager),
    /// A dedicated connection to a single server.
    Multiplexed(MultiplexedConnection),
    /// A connection to a cluster (shared or dedicated).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(conn) => conn.req_packed_command(cmd),
            Conn::Multiplexed(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Multiplexed(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(conn) => conn.get_db(),
            Conn::Multiplexed(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

/// A node that holds keys: the server itself, or one master of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Node {
    /// The single server.
    Server,
    /// A cluster master at this host and port.
    Master(String, u16),
}

impl Conn {
    /// Every node that holds keys, for commands that see one node's keys only (`SCAN`).
    pub(super) async fn masters(&self) -> RedisResult<Vec<Node>> {
        let Conn::Cluster(cluster) = self else {
            return Ok(vec![Node::Server]);
        };
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut cluster.clone())
            .await?;
        Ok(parse_masters(&nodes))
    }

    /// `cmd`'s reply from `node`.
    pub(super) async fn query_on<T: FromRedisValue>(
        &self,
        node: &Node,
        cmd: Cmd,
    ) -> RedisResult<T> {
        match (self, node) {
            (Conn::Cluster(cluster), Node::Master(host, port)) => {
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                let value = cluster.clone().route_command(cmd, route).await?;
                Ok(redis::from_redis_value(value)?)
            }
            (conn, _) => cmd.query_async(&mut conn.clone()).await,
        }
    }
}

/// The masters that serve slots, from a `CLUSTER NODES` reply (`<id> <ip:port@cport[,host]>
/// <flags> <master> <ping> <pong> <epoch> <link> <slot>…`).
fn parse_masters(nodes: &str) -> Vec<Node> {
    nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let serves_slots = fields.len() > 8;
            if !serves_slots || !flags.split(',').any(|flag| flag == "master") {
                return None;
            }
            let address = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            Some(Node::Master(host.to_owned(), port.parse().ok()?))
        })
        .collect()
}

/// Per-slot pipelines of one [`Batch`] in flight at once on a cluster. A batch over
/// thousands of users spans thousands of slots: all sent at once, the last in the queue
/// would wait out the response timeout behind the others on a busy machine.
const SLOTS_IN_FLIGHT: usize = 64;

/// Commands sent together, each on its own (not atomic): see the module docs.
#[derive(Default)]
pub(super) struct Batch {
    commands: Vec<(Slot, Cmd)>,
}

impl Batch {
    pub(super) fn new() -> Batch {
        Batch::default()
    }

    /// Adds the command `name key`; returns it for the rest of its arguments.
    pub(super) fn cmd(&mut self, name: &str, key: &str) -> &mut Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(key);
        self.push(Slot::for_key(key), cmd)
    }

    /// Adds `EVAL script <keys>`; returns it for the script's arguments. The keys must share
    /// a hash slot (their tags see to it: see the bus's key table).
    pub(super) fn eval(&mut self, script: &str, keys: &[&str]) -> &mut Cmd {
        let slot = keys.first().map_or(Slot::for_key(""), Slot::for_key);
        debug_assert!(
            keys.iter().all(|key| Slot::for_key(key) == slot),
            "script keys in several slots: {keys:?}"
        );
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len()).arg(keys);
        self.push(slot, cmd)
    }

    fn push(&mut self, slot: Slot, cmd: Cmd) -> &mut Cmd {
        let index = self.commands.len();
        self.commands.push((slot, cmd));
        &mut self.commands[index].1
    }

    /// Runs the commands; returns their replies in the order they were added.
    pub(super) async fn query<T: FromRedisValue>(self, conn: &Conn) -> RedisResult<Vec<T>> {
        if self.commands.is_empty() {
            return Ok(Vec::new());
        }
        let values = match conn {
            Conn::Cluster(cluster) => self.query_by_slot(cluster).await?,
            single => {
                let mut pipe = redis::pipe();
                for (_, cmd) in self.commands {
                    pipe.add_command(cmd);
                }
                pipe.query_async::<Vec<Value>>(&mut single.clone()).await?
            }
        };
        values
            .into_iter()
            .map(|value| Ok(redis::from_redis_value(value)?))
            .collect()
    }

    /// Runs the commands, for their effect.
    pub(super) async fn exec(self, conn: &Conn) -> RedisResult<()> {
        self.query::<Value>(conn).await.map(drop)
    }

    /// One pipeline per slot, [`SLOTS_IN_FLIGHT`] at a time; the replies back in the order
    /// of the commands.
    async fn query_by_slot(self, cluster: &ClusterConnection) -> RedisResult<Vec<Value>> {
        use futures::{StreamExt as _, TryStreamExt as _};
        let total = self.commands.len();
        let mut groups: HashMap<Slot, (Vec<usize>, Pipeline)> = HashMap::new();
        for (index, (slot, cmd)) in self.commands.into_iter().enumerate() {
            let (indices, pipe) = groups.entry(slot).or_default();
            indices.push(index);
            pipe.add_command(cmd);
        }
        let replies: Vec<(Vec<usize>, Vec<Value>)> = futures::stream::iter(groups.into_values())
            .map(|(indices, pipe)| {
                let mut conn = cluster.clone();
                async move {
                    let values: Vec<Value> = pipe.query_async(&mut conn).await?;
                    Ok::<_, RedisError>((indices, values))
                }
            })
            .buffer_unordered(SLOTS_IN_FLIGHT)
            .try_collect()
            .await?;
        let mut values = vec![Value::Nil; total];
        for (indices, group) in replies {
            for (index, value) in indices.into_iter().zip(group) {
                values[index] = value;
            }
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_are_the_nodes_that_serve_slots() {
        let nodes = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7002@17002,node-b master - 0 1700000000000 2 connected 5461-10922
c3 127.0.0.1:7003@17003 slave a1 0 1700000000000 1 connected
d4 127.0.0.1:7004@17004 master - 0 1700000000000 4 connected
e5 [::1]:7005@17005 master - 0 0 5 connected 10923-16383
";
        assert_eq!(
            parse_masters(nodes),
            vec![
                Node::Master("127.0.0.1".into(), 7001),
                Node::Master("127.0.0.1".into(), 7002),
                Node::Master("::1".into(), 7005),
            ]
        );
        assert!(parse_masters("garbage\n\n").is_empty());
    }

    #[test]
    fn a_batch_groups_its_commands_by_slot() {
        let mut batch = Batch::new();
        batch.cmd("GET", "a:{1}");
        batch.eval("return 1", &["x:{1}", "y:{1}"]).arg("argv");
        batch.cmd("GET", "other");
        let slots: Vec<Slot> = batch.commands.iter().map(|(slot, _)| *slot).collect();
        assert_eq!(slots[0], slots[1], "one tag, one slot");
        assert_eq!(slots[0], Slot::for_key("1"));
        assert_eq!(slots[2], Slot::for_key("other"));
    }
}

//! im-bench's command line.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use im_client::Address;
use im_client::tls::Connector;

use super::rival::{self, System};

/// Connections one source address can open to one port (the default ephemeral range has
/// about 28,000 ports), with a margin.
const PER_SOURCE: usize = 25_000;

/// Connections one process holds: the hard open-file limit here is 20,000, and the process
/// needs a few files of its own.
const PER_PROCESS: usize = 15_000;

/// Load for an MPIM gateway over its client protocol.
#[derive(Parser, Debug, Clone, PartialEq)]
#[command(
    name = "im-bench",
    about = "Load for an MPIM gateway over its client protocol"
)]
pub struct Args {
    /// The system to load: an MPIM gateway, ejabberd (XMPP) or an MQTT broker.
    #[arg(long, global = true, value_enum, default_value_t = System::Mpim)]
    pub target: System,
    /// ejabberd's and the MQTT broker's options.
    #[command(flatten)]
    pub rival: rival::Options,
    /// The gateway's TCP address: `host:port`, or `tls://host:port` for TLS.
    #[arg(long, global = true, default_value = "127.0.0.1:6000")]
    pub gateway: String,
    /// Speak WebSocket (binary frames) instead of TCP.
    #[arg(long, global = true)]
    pub ws: bool,
    /// The WebSocket URL, `ws://` or `wss://` (implies --ws; default:
    /// `ws://<gateway host>:6080/ws`).
    #[arg(long, global = true)]
    pub ws_url: Option<String>,
    /// A PEM file of CA certificates to trust for TLS besides the public roots.
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// Start of every user name (default: a new one per run, so runs never collide).
    #[arg(long, global = true)]
    pub prefix: Option<String>,
    /// Every user's password.
    #[arg(long, global = true, default_value = "bench-password")]
    pub password: String,
    /// Connections set up (registered, logged in) at once.
    #[arg(long, global = true, default_value_t = 64)]
    pub setup_concurrency: usize,
    /// Seconds of load before the measured window (pairs).
    #[arg(long, global = true, default_value_t = 2)]
    pub warmup_seconds: u64,
    /// Most seconds to wait after sending for every ack and push.
    #[arg(long, global = true, default_value_t = 15)]
    pub drain_seconds: u64,
    /// Local addresses to connect from, in turn (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, global = true, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Bytes of every message body (a timestamp, padded).
    #[arg(long, global = true, default_value_t = 32)]
    pub body_bytes: usize,
    /// Runtime worker threads (1: a single-threaded runtime).
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// What to run.
    #[command(subcommand)]
    pub mode: Mode,
}

/// The runs.
#[derive(Subcommand, Debug, Clone, PartialEq)]
pub enum Mode {
    /// Users in friend pairs sending 1:1 messages at a total rate.
    Pairs {
        /// Users (an even number).
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// Messages per second, all users together.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds measured (after the warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// One group, every member online, a few members sending.
    Group {
        /// Members, all online.
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Messages sent in all.
        #[arg(long, default_value_t = 200)]
        messages: u64,
        /// Messages per second in all (default: as fast as --window allows).
        #[arg(long)]
        rate: Option<u64>,
        /// Members that send.
        #[arg(long, default_value_t = 1)]
        senders: usize,
        /// Unacknowledged messages per sender, without --rate.
        #[arg(long, default_value_t = 32)]
        window: usize,
    },
    /// Friend pairs chatting through the client SDK, which reconnects, resumes and resends
    /// through faults: for fault drills (see `im::soak`).
    Soak {
        /// Friend pairs.
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Messages per second, all users together.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// The longest pause between a client's reconnect attempts, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        reconnect_max_ms: u64,
        /// How long a send may wait for its ack, outages included, in seconds.
        #[arg(long, default_value_t = 60)]
        send_timeout_seconds: u64,
        /// Write `start_ms,end_ms,ok` for every send to this CSV file.
        #[arg(long)]
        record: Option<std::path::PathBuf>,
    },
    /// Authenticated connections that only ping; the gateway's memory per connection.
    Idle {
        /// Connections in all.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Seconds to hold them once all are open.
        #[arg(long, default_value_t = 10)]
        hold_seconds: u64,
        /// The gateway's (or other server's) pid, to read its VmRSS before and after.
        #[arg(long, visible_alias = "server-pid")]
        gateway_pid: Option<u32>,
        /// Processes to spread the connections over (default: one per 15,000).
        #[arg(long)]
        processes: Option<usize>,
        /// Connections (devices) per user: only a user's first logs in with the password.
        #[arg(long, default_value_t = 100)]
        devices_per_user: usize,
        /// Run as a worker of a parent idle run.
        #[arg(long, hide = true)]
        worker: bool,
    },
}

impl Args {
    /// The WebSocket URL when speaking WebSocket.
    pub fn ws_url(&self) -> Option<String> {
        if let Some(url) = &self.ws_url {
            return Some(url.clone());
        }
        if !self.ws {
            return None;
        }
        let gateway = self
            .gateway
            .split_once("://")
            .map_or(self.gateway.as_str(), |(_, rest)| rest);
        let host = gateway.rsplit_once(':').map_or(gateway, |(host, _)| host);
        Some(format!("ws://{host}:6080/ws"))
    }

    /// Where to connect: the gateway's TCP address, or the WebSocket URL.
    ///
    /// # Errors
    /// When the address cannot be read.
    pub fn address(&self) -> anyhow::Result<Address> {
        let address = self.ws_url().unwrap_or_else(|| self.gateway.clone());
        Ok(Address::parse(&address)?)
    }

    /// The TLS connector for a `tls://` or `wss://` address, trusting `--ca` too.
    ///
    /// # Errors
    /// When the address cannot be read, or the CA file cannot be used.
    pub fn tls(&self) -> anyhow::Result<Option<Connector>> {
        let address = self.address()?;
        if !address.is_tls() {
            return Ok(None);
        }
        let connector = Connector::new(address.host(), self.ca.as_deref())
            .with_context(|| format!("TLS for {address}"))?;
        Ok(Some(connector))
    }

    /// The source addresses for `connections`: those given, or when one address would run
    /// out of ports, 127.0.0.2 and up.
    pub fn sources(&self, connections: usize) -> Vec<IpAddr> {
        if !self.source_ips.is_empty() || connections <= PER_SOURCE {
            return self.source_ips.clone();
        }
        (0..connections.div_ceil(PER_SOURCE))
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)))
            .collect()
    }

    /// The number of idle worker processes for `connections`.
    pub fn processes(requested: Option<usize>, connections: usize) -> usize {
        requested
            .unwrap_or_else(|| connections.div_ceil(PER_PROCESS))
            .max(1)
    }

    /// The command line of idle worker `k` of `prefix`'s run, holding `connections`.
    pub fn worker_args(
        &self,
        prefix: &str,
        k: usize,
        connections: usize,
        sources: &[IpAddr],
    ) -> Vec<String> {
        let Mode::Idle {
            devices_per_user, ..
        } = self.mode
        else {
            unreachable!("workers are for idle runs");
        };
        let mut args = vec![
            "--gateway".to_string(),
            self.gateway.clone(),
            "--prefix".into(),
            format!("{prefix}-w{k}"),
            "--password".into(),
            self.password.clone(),
            "--setup-concurrency".into(),
            self.setup_concurrency.to_string(),
            "--threads".into(),
            self.threads.to_string(),
        ];
        if let Some(url) = self.ws_url() {
            args.extend(["--ws".into(), "--ws-url".into(), url]);
        }
        if let Some(ca) = &self.ca {
            args.extend(["--ca".into(), ca.display().to_string()]);
        }
        if !sources.is_empty() {
            let list = sources.iter().map(ToString::to_string).collect::<Vec<_>>();
            args.extend(["--source-ips".into(), list.join(",")]);
        }
        args.extend([
            "idle".into(),
            "--connections".into(),
            connections.to_string(),
            "--devices-per-user".into(),
            devices_per_user.to_string(),
            "--worker".into(),
        ]);
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Args {
        Args::try_parse_from(line.split_whitespace()).unwrap()
    }

    #[test]
    fn the_issue_command_lines_parse() {
        let args =
            parse("im-bench --gateway 127.0.0.1:6000 pairs --users 2000 --rate 10000 --seconds 20");
        assert_eq!(
            args.mode,
            Mode::Pairs {
                users: 2000,
                rate: 10_000,
                seconds: 20
            }
        );
        let args = parse("im-bench --gateway 127.0.0.1:6000 group --members 5000 --messages 200");
        assert!(matches!(
            args.mode,
            Mode::Group {
                members: 5000,
                messages: 200,
                rate: None,
                senders: 1,
                ..
            }
        ));
        let args = parse("im-bench --gateway 127.0.0.1:6000 --ws idle --connections 19000");
        assert!(matches!(
            args.mode,
            Mode::Idle {
                connections: 19_000,
                processes: None,
                ..
            }
        ));
        assert_eq!(args.ws_url().as_deref(), Some("ws://127.0.0.1:6080/ws"));
        assert_eq!(args.address().unwrap().host_port(), "127.0.0.1:6080");
        let args = parse("im-bench --ws --ws-url ws://localhost/ws pairs");
        assert_eq!(args.address().unwrap().host_port(), "localhost:80");
        let args = parse("im-bench pairs");
        assert_eq!(args.address().unwrap().host_port(), "127.0.0.1:6000");
        assert!(args.tls().unwrap().is_none());
    }

    #[test]
    fn tls_addresses_and_the_ca_file() {
        let args = parse("im-bench --gateway tls://localhost:6443 pairs");
        assert_eq!(args.address().unwrap().to_string(), "tls://localhost:6443");
        let tls = args.tls().unwrap().expect("TLS");
        assert_eq!(tls.server_name(), "localhost");
        // --ws-url alone means WebSocket.
        let args = parse("im-bench --ws-url wss://127.0.0.1:6443/ws pairs");
        assert_eq!(args.address().unwrap().host_port(), "127.0.0.1:6443");
        assert_eq!(args.tls().unwrap().unwrap().server_name(), "127.0.0.1");
        let args = parse("im-bench --gateway tls://h:1 --ca /nonexistent/ca.pem pairs");
        let err = format!("{:#}", args.tls().unwrap_err());
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
        assert!(
            parse("im-bench --gateway https://h:1 pairs")
                .address()
                .is_err()
        );
        let args = parse("im-bench --gateway tls://h:1 --ws --ca ca.pem idle");
        assert_eq!(
            args.worker_args("p", 0, 1, &[])[..2],
            ["--gateway", "tls://h:1"]
        );
        let worker = args.worker_args("p", 0, 1, &[]);
        let at = worker.iter().position(|arg| arg == "--ca").unwrap();
        assert_eq!(worker[at + 1], "ca.pem");
        assert_eq!(args.ws_url().as_deref(), Some("ws://h:6080/ws"));
    }

    #[test]
    fn global_flags_may_follow_the_mode() {
        let args = parse("im-bench pairs --users 4 --source-ips 127.0.0.2,127.0.0.3 --prefix x");
        assert_eq!(args.prefix.as_deref(), Some("x"));
        assert_eq!(args.source_ips.len(), 2);
        assert_eq!(args.ws_url(), None);
    }

    #[test]
    fn many_connections_get_more_sources_and_processes() {
        let args = parse("im-bench idle --connections 60000");
        assert!(args.sources(1000).is_empty());
        let sources = args.sources(60_000);
        assert_eq!(sources.len(), 3);
        assert_eq!(sources[0].to_string(), "127.0.0.2");
        assert_eq!(Args::processes(None, 19_000), 2);
        assert_eq!(Args::processes(None, 100), 1);
        assert_eq!(Args::processes(Some(4), 100), 4);
    }

    #[test]
    fn worker_command_lines_parse_back() {
        let args =
            parse("im-bench --ws --password pw idle --connections 30000 --devices-per-user 10");
        let sources = args.sources(30_000);
        let worker = args.worker_args("run1", 1, 15_000, &sources);
        let parsed =
            Args::try_parse_from(std::iter::once("im-bench".to_string()).chain(worker)).unwrap();
        assert_eq!(parsed.prefix.as_deref(), Some("run1-w1"));
        assert_eq!(parsed.password, "pw");
        assert_eq!(parsed.source_ips, sources);
        assert!(parsed.ws);
        assert!(matches!(
            parsed.mode,
            Mode::Idle {
                connections: 15_000,
                devices_per_user: 10,
                worker: true,
                ..
            }
        ));
    }
}

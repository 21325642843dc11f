//! A private ZooKeeper server for tests that stop and restart it: a standalone
//! `QuorumPeerMain` on a free port of 127.0.0.1 with its own data directory, killed on drop.
#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const MAIN_CLASS: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";
const START_TIMEOUT: Duration = Duration::from_secs(40);

/// A ZooKeeper server owned by one test.
pub struct PrivateZk {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateZk {
    /// Starts a server and waits until it serves requests.
    ///
    /// Panics, saying what is missing, when java or the ZooKeeper jars are not installed.
    pub async fn start() -> PrivateZk {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("mprpc-zk-{}-{port}", std::process::id()));
        // A leftover of an earlier run with the same pid and port would hold stale sessions.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("data")).expect("create ZooKeeper data dir");
        fs::create_dir_all(dir.join("conf")).expect("create ZooKeeper conf dir");
        fs::write(
            dir.join("conf/zoo.cfg"),
            format!(
                "tickTime=2000\ndataDir={data}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 maxClientCnxns=0\nadmin.enableServer=false\n4lw.commands.whitelist=srvr,ruok\n",
                data = dir.join("data").display()
            ),
        )
        .expect("write zoo.cfg");
        fs::write(
            dir.join("conf/log4j.properties"),
            format!(
                "log4j.rootLogger=INFO, FILE\n\
                 log4j.appender.FILE=org.apache.log4j.FileAppender\n\
                 log4j.appender.FILE.File={}\n\
                 log4j.appender.FILE.layout=org.apache.log4j.PatternLayout\n\
                 log4j.appender.FILE.layout.ConversionPattern=%d{{ISO8601}} %-5p [%t] - %m%n\n",
                dir.join("zookeeper.log").display()
            ),
        )
        .expect("write log4j.properties");
        let mut zk = PrivateZk {
            port,
            dir,
            child: None,
        };
        zk.spawn().await;
        zk
    }

    /// `127.0.0.1:<port>`.
    pub fn hosts(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server at once, as a crash would; its data stays for a restart.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data (sessions and nodes survive).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let jar = Path::new("/usr/share/java/zookeeper.jar");
        assert!(
            jar.exists(),
            "ZooKeeper is not installed ({} missing): run `scripts/services.sh up zookeeper` \
             or `apt-get install zookeeper`",
            jar.display()
        );
        let log = fs::File::create(self.dir.join("zookeeper.out")).expect("create zookeeper.out");
        let child = Command::new("java")
            .arg("-Xmx256m")
            .arg(format!("-Dzookeeper.log.dir={}", self.dir.display()))
            .arg("-cp")
            .arg(classpath(&self.dir.join("conf")))
            .arg(MAIN_CLASS)
            .arg(self.dir.join("conf/zoo.cfg"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| {
                panic!("cannot run java ({err}): install a JRE, e.g. `apt-get install default-jre-headless`")
            });
        self.child = Some(child);
        self.wait_serving().await;
    }

    async fn wait_serving(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if srvr(self.port)
                .await
                .is_some_and(|reply| reply.contains("Mode: "))
            {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let out = fs::read_to_string(self.dir.join("zookeeper.out")).unwrap_or_default();
                let log = fs::read_to_string(self.dir.join("zookeeper.log")).unwrap_or_default();
                self.kill();
                panic!(
                    "private ZooKeeper on port {} did not start (exit: {exited:?})\n--- stdout/stderr:\n{}\n--- log:\n{}",
                    self.port,
                    tail(&out),
                    tail(&log)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PrivateZk {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The conf dir (for log4j.properties) and the jars; zookeeper.jar's manifest lists the
/// Debian jars it needs, only the logging binding comes on top.
fn classpath(conf: &Path) -> String {
    let mut parts = vec![conf.display().to_string()];
    for jar in [
        "/usr/share/java/zookeeper.jar",
        "/usr/share/java/zookeeper-jute.jar",
        "/usr/share/java/slf4j-log4j12.jar",
        "/usr/share/java/log4j-1.2.jar",
    ] {
        if Path::new(jar).exists() {
            parts.push(jar.to_owned());
        }
    }
    if let Ok(entries) = fs::read_dir("/usr/share/zookeeper/lib") {
        let mut jars: Vec<String> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "jar"))
            .map(|path| path.display().to_string())
            .collect();
        jars.sort();
        parts.extend(jars);
    }
    parts.join(":")
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// The server's answer to the `srvr` four-letter word, `None` if it does not answer.
pub async fn srvr(port: u16) -> Option<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"srvr").await.ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.ok()?;
        Some(reply)
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The shared server's address (`MPRPC_ZK`, default 127.0.0.1:2181); fails the test (rather
/// than skipping it) when it is down.
pub async fn shared_hosts() -> String {
    let hosts = std::env::var("MPRPC_ZK").unwrap_or_else(|_| "127.0.0.1:2181".to_owned());
    let port = hosts
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(2181);
    assert!(
        srvr(port).await.is_some(),
        "no ZooKeeper answers on {hosts}: start it with `scripts/services.sh up zookeeper`"
    );
    hosts
}

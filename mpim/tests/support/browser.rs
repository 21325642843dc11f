//! Headless Chromium driven through chromedriver (WebDriver), for tests that use the web
//! client as a person does. Debian's `chromium` and `chromium-driver` must be installed
//! (`scripts/test.sh` installs them).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// How long a page may take to show what a test waits for.
const PATIENCE: Duration = Duration::from_secs(20);

/// Pages narrower than this are phones.
const PHONE_WIDTH: u32 = 600;

/// A chromedriver process; each [`Page`] is a browser of its own (own profile, own storage).
pub(crate) struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    pub(crate) async fn start() -> Driver {
        // chromedriver takes a port number, not a listener: find a free one.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver runs: install chromium and chromium-driver (scripts/test.sh does)",
            );
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    /// A new browser of `width` × `height` pixels, showing `url`.
    pub(crate) async fn page(
        &self,
        name: &'static str,
        url: &str,
        width: u32,
        height: u32,
    ) -> Page {
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--no-first-run", "--disable-extensions",
                     format!("--window-size={width},{height}")],
        });
        if width < PHONE_WIDTH {
            // A window cannot be made that narrow: emulate a phone's screen instead.
            options["mobileEmulation"] = json!({
                "deviceMetrics": {"width": width, "height": height, "pixelRatio": 2.0},
            });
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".to_owned(), options);
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a browser session");
        client.goto(url).await.expect("the page loads");
        Page { client, name }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser showing the web client.
pub(crate) struct Page {
    pub(crate) client: Client,
    name: &'static str,
}

impl Page {
    /// The text of every element matching `css`, in document order.
    pub(crate) async fn texts(&self, css: &str) -> Vec<String> {
        let script = "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)";
        match self.client.execute(script, vec![json!(css)]).await {
            Ok(Value::Array(items)) => items
                .into_iter()
                .map(|v| v.as_str().unwrap_or_default().to_owned())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Runs `script` in the page and returns what it returns.
    pub(crate) async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .expect("script runs")
    }

    /// Waits until the texts of `css` satisfy `check`; on timeout saves a screenshot and fails.
    pub(crate) async fn wait_for(
        &self,
        css: &str,
        what: &str,
        check: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let texts = self.texts(css).await;
            if check(&texts) {
                return texts;
            }
            if Instant::now() > deadline {
                self.screenshot(&format!("failed-{}", self.name)).await;
                panic!("{}: {what}: `{css}` shows {texts:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until an element matching `css` contains `text`.
    pub(crate) async fn wait_text(&self, css: &str, text: &str) {
        self.wait_for(css, &format!("waiting for {text:?}"), |t| {
            t.iter().any(|s| s.contains(text))
        })
        .await;
    }

    /// Clicks the first element matching `css` once it is there and visible.
    pub(crate) async fn click(&self, css: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                if element.click().await.is_ok() {
                    return;
                }
            }
            if Instant::now() > deadline {
                self.screenshot(&format!("failed-{}", self.name)).await;
                panic!("{}: cannot click `{css}`", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replaces the value of the input matching `css` with `text`.
    pub(crate) async fn fill(&self, css: &str, text: &str) {
        let element = self.client.find(Locator::Css(css)).await.expect(css);
        element.clear().await.expect("clear");
        element.send_keys(text).await.expect("type");
    }

    pub(crate) async fn register(&self, name: &str, password: &str) {
        self.wait_for("#login-button", "the login form", |t| !t.is_empty())
            .await;
        self.fill("#login-name", name).await;
        self.fill("#login-password", password).await;
        self.click("#register-button").await;
        self.wait_text("#me", name).await;
    }

    /// Types `text` into the open conversation and sends it.
    pub(crate) async fn say(&self, text: &str) {
        self.fill("#composer-text", text).await;
        self.click("#send-button").await;
    }

    /// Saves a PNG of the page as `target/screenshots/<name>.png`.
    pub(crate) async fn screenshot(&self, name: &str) -> PathBuf {
        let dir = screenshots();
        std::fs::create_dir_all(&dir).expect("screenshot directory");
        let path = dir.join(format!("{name}.png"));
        if let Ok(png) = self.client.screenshot().await {
            std::fs::write(&path, png).expect("screenshot written");
        }
        path
    }

    pub(crate) async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// Where screenshots go: the workspace's target directory.
fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("screenshots")
}

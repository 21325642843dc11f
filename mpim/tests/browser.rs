//! The web client in headless Chromium, against a real `mpim`: people register, befriend,
//! chat 1:1 and in a group, reload, live through a crash of the server, and never see a
//! message twice or a message's HTML run. Screenshots go to `target/screenshots/`.

mod support;

use fantoccini::Locator;
use support::Mpim;
use support::browser::{Driver, Page};

const XSS: &str = "<img src=x onerror=alert(1)>";

/// One test at a time: each runs several browsers, and on two cores three tests' worth of
/// browsers at once only makes every wait longer.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How many message bubbles on `page` read exactly `text`.
async fn shown(page: &Page, text: &str) -> usize {
    let bubbles = page.texts("#messages .message .bubble").await;
    bubbles.iter().filter(|b| b.as_str() == text).count()
}

/// Waits until `page` shows `text` in exactly one bubble of the open conversation.
async fn shows_once(page: &Page, text: &str) {
    page.wait_for(
        "#messages .message .bubble",
        &format!("{text:?} once"),
        |b| b.iter().filter(|s| s.as_str() == text).count() == 1,
    )
    .await;
}

/// `typist` types into the open conversation until `watcher` shows `notice`.
async fn keep_typing(typist: &Page, watcher: &Page, notice: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let composer = typist
        .client
        .find(Locator::Css("#composer-text"))
        .await
        .unwrap();
    while !watcher.texts("#typing").await.concat().contains(notice) {
        assert!(
            std::time::Instant::now() < deadline,
            "{notice:?} never showed"
        );
        composer.send_keys("a").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `page` opens its conversation named `title` from the chat list.
async fn open_chat(page: &Page, title: &str) {
    page.click("[data-tab=chats]").await;
    page.wait_text("#conversations .conversation .name", title)
        .await;
    let selector = format!("#conversations .conversation[data-title={title:?}]");
    page.click(&selector).await;
    page.wait_text("#chat-title", title).await;
}

/// `page` sends a friend request to `name`; `other`, its Friends tab open already, sees the
/// request come (a push: no reload, no tab switch) and accepts it; `page` hears the answer
/// the same way.
async fn befriend(page: &Page, other: &Page, name: &str, other_name: &str) {
    other.click("[data-tab=friends]").await;
    page.click("[data-tab=friends]").await;
    page.fill("#add-friend-name", name).await;
    page.click("#add-friend-form button").await;
    page.wait_text("#friends-status", "Friend request sent")
        .await;
    other.wait_text("#friend-requests .name", other_name).await;
    other.click("#friend-requests .accept").await;
    other.wait_text("#friends .name", other_name).await;
    page.wait_text(
        "#friends-status",
        &format!("{name} accepted your friend request"),
    )
    .await;
    page.wait_text("#friends .name", name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_reload_and_outlive_a_crash() {
    let _serial = SERIAL.lock().await;
    let data = tempdir("browser-chat");
    let server = Mpim::start(&data, "127.0.0.1:0", "127.0.0.1:0");
    let (tcp, http) = (server.tcp.clone(), server.http.clone());
    let url = format!("http://{http}/");
    let driver = Driver::start().await;
    let alice = driver.page("alice", &url, 1100, 720).await;
    let bob = driver.page("bob", &url, 1100, 720).await;
    alice.register("alice", "alice-password").await;
    bob.register("bob", "bob-password").await;
    befriend(&alice, &bob, "bob", "alice").await;

    // Bob starts the conversation from his friend list; Alice sees it arrive unread.
    bob.click("#friends .chat").await;
    bob.say("hi alice").await;
    bob.wait_for(".message.mine .status", "the ack", |s| {
        s.iter().any(|s| s == "sent" || s == "read")
    })
    .await;
    alice.wait_text("#conversations .badge.unread", "1").await;
    open_chat(&alice, "bob").await;
    shows_once(&alice, "hi alice").await;
    // Alice read it: Bob's message turns read.
    bob.wait_text(".message.mine .status", "read").await;
    alice.say("hello bob").await;
    shows_once(&bob, "hello bob").await;

    // Typing shows on the other side (the gateway passes one notice per interval, so
    // Alice types on, as a person would, until it shows).
    keep_typing(&alice, &bob, "alice is typing").await;
    alice.fill("#composer-text", "").await;

    // HTML in a message is text.
    alice.say(XSS).await;
    shows_once(&bob, XSS).await;
    assert_eq!(
        bob.eval("return document.querySelectorAll('#messages img').length")
            .await,
        0
    );
    assert!(bob.client.get_alert_text().await.is_err(), "no alert ran");
    bob.screenshot("chat").await;

    // A reload keeps the session and the history, and Bob's message still shows read (the
    // conversation list says how far Alice read; no receipt comes after the reload).
    bob.client.refresh().await.unwrap();
    open_chat(&bob, "alice").await;
    for text in ["hi alice", "hello bob", XSS] {
        shows_once(&bob, text).await;
    }
    bob.wait_text(".message.mine .status", "read").await;

    // The server dies mid-conversation; Alice writes while it is down and sees it pending.
    server.kill();
    alice.wait_text("#link-state", "reconnecting").await;
    alice.say("while you were down").await;
    alice.wait_text(".message.pending .status", "sending").await;
    let server = Mpim::start(&data, &tcp, &http);
    alice.wait_text("#link-state", "online").await;
    shows_once(&alice, "while you were down").await;
    shows_once(&bob, "while you were down").await;
    bob.say("back again").await;
    shows_once(&alice, "back again").await;
    for page in [&alice, &bob] {
        for text in [
            "hi alice",
            "hello bob",
            XSS,
            "while you were down",
            "back again",
        ] {
            assert_eq!(shown(page, text).await, 1, "{text:?} shown once");
        }
    }
    assert_eq!(
        alice.texts(".message.pending").await.len(),
        0,
        "nothing left unsent"
    );

    // Logout ends the session: a reload shows the login form.
    bob.click("#logout-button").await;
    bob.wait_for("#login", "the login screen", |_| true).await;
    bob.client.refresh().await.unwrap();
    bob.wait_for("#login-button", "the login form", |t| !t.is_empty())
        .await;
    assert_eq!(
        bob.eval("return document.getElementById('login').hidden")
            .await,
        false
    );

    alice.close().await;
    bob.close().await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_on_a_phone_and_a_desktop() {
    let _serial = SERIAL.lock().await;
    let data = tempdir("browser-group");
    let server = Mpim::start(&data, "127.0.0.1:0", "127.0.0.1:0");
    let url = format!("http://{}/", server.http);
    let driver = Driver::start().await;
    let ann = driver.page("ann", &url, 1100, 720).await;
    let ben = driver.page("ben", &url, 1100, 720).await;
    let cat = driver.page("cat", &url, 390, 780).await;
    ann.register("ann", "ann-password").await;
    ben.register("ben", "ben-password").await;
    cat.register("cat", "cat-password").await;

    ann.click("[data-tab=groups]").await;
    ann.fill("#group-name", "trio").await;
    ann.fill("#group-description", "three of us").await;
    ann.click("#create-group-form button").await;
    ann.wait_text("#groups-status", "Created").await;
    let status = ann.texts("#groups-status").await.concat();
    let id = status
        .split("(id ")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .to_owned();
    for page in [&ben, &cat] {
        page.click("[data-tab=groups]").await;
        page.fill("#join-group-id", &id).await;
        page.click("#join-group-form button").await;
        page.wait_text("#chat-title", "trio").await;
    }
    ann.wait_text("#chat-title", "trio").await;
    ann.say("welcome, both").await;
    ben.say("thanks ann").await;
    cat.say("hello from my phone").await;
    for page in [&ann, &ben, &cat] {
        for text in ["welcome, both", "thanks ann", "hello from my phone"] {
            shows_once(page, text).await;
        }
    }
    // Group messages of others name their sender.
    ann.wait_text("#messages .message .from", "cat").await;
    cat.screenshot("phone").await;

    // The owner sees the members with their roles and makes ben an admin.
    ann.click("#members-button").await;
    ann.wait_for("#members li", "three members", |m| m.len() == 3)
        .await;
    ann.wait_text("#members li .role", "owner").await;
    ann.click("#members li[data-user] button.link").await;
    ann.wait_text("#group-panel-status", "is now admin").await;
    ann.wait_text("#members li .role", "admin").await;
    ann.screenshot("group").await;
    // An admin manages members, a plain member does not.
    ben.click("#members-button").await;
    ben.wait_for("#members li", "three members", |m| m.len() == 3)
        .await;
    assert_eq!(
        ben.eval("return document.getElementById('group-admin').hidden")
            .await,
        false
    );
    cat.click("#members-button").await;
    cat.wait_for("#members li", "three members", |m| m.len() == 3)
        .await;
    assert_eq!(
        cat.eval("return document.getElementById('group-admin').hidden")
            .await,
        true
    );

    for page in [ann, ben, cat] {
        page.close().await;
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_recall_edit_and_blocking() {
    let _serial = SERIAL.lock().await;
    let data = tempdir("browser-history");
    let server = Mpim::start(&data, "127.0.0.1:0", "127.0.0.1:0");
    let url = format!("http://{}/", server.http);
    let driver = Driver::start().await;
    let dan = driver.page("dan", &url, 1100, 720).await;
    let eve = driver.page("eve", &url, 1100, 720).await;
    dan.register("dan", "dan-password").await;
    eve.register("eve", "eve-password").await;
    befriend(&dan, &eve, "eve", "dan").await;

    // 120 messages: Eve sees the newest page, and older ones as she scrolls up.
    dan.click("#friends .chat").await;
    dan.eval("for (let i = 1; i <= 120; i++) send(conversation(state.open), `line ${i}`)")
        .await;
    dan.wait_for(".message.mine .status", "120 acks", |s| s.len() == 120)
        .await;
    // (Pushes brought Eve's page every line already: a reload starts it afresh.)
    eve.client.refresh().await.unwrap();
    open_chat(&eve, "dan").await;
    shows_once(&eve, "line 120").await;
    assert_eq!(
        shown(&eve, "line 1").await,
        0,
        "only the newest page at first"
    );
    let scroll = "document.getElementById('messages').scrollTop = 0; \
                  document.getElementById('messages').dispatchEvent(new Event('scroll'))";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while shown(&eve, "line 1").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "older pages never loaded"
        );
        eve.eval(scroll).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eve.wait_text("#messages .more", "the beginning").await;
    let lines: Vec<String> = (1..=120).map(|i| format!("line {i}")).collect();
    let bubbles = eve.texts("#messages .message .bubble").await;
    assert_eq!(bubbles, lines, "every line once, in order");

    // Dan recalls one message and edits another; Eve sees both.
    let mine = |n: usize| format!("#messages .message.mine:nth-of-type({n})");
    dan.click(&format!("{} .meta button.link:last-child", mine(2)))
        .await;
    eve.wait_text("#messages .message.recalled .bubble", "message recalled")
        .await;
    dan.click(&format!("{} .meta button.link:nth-last-child(2)", mine(3)))
        .await;
    dan.client.send_alert_text("line 2, edited").await.unwrap();
    dan.client.accept_alert().await.unwrap();
    shows_once(&eve, "line 2, edited").await;
    eve.wait_text("#messages .message .meta", "edited").await;

    // Eve blocks Dan: his message fails, with a retry that works once she unblocks him.
    eve.click("[data-tab=friends]").await;
    eve.click("#friends li button.link:last-child").await;
    eve.wait_text("#blocked .name", "dan").await;
    dan.say("are you there?").await;
    dan.wait_text(".message.pending .status.failed", "failed")
        .await;
    dan.screenshot("failed").await;
    eve.click("#blocked button.link").await;
    eve.wait_text("#friends-status", "Unblocked").await;
    // Blocking ended the friendship, and only friends may write: they befriend again.
    befriend(&eve, &dan, "dan", "eve").await;
    dan.click(".message.pending .retry").await;
    open_chat(&eve, "dan").await;
    shows_once(&eve, "are you there?").await;
    assert_eq!(dan.texts(".message.pending").await.len(), 0);

    dan.close().await;
    eve.close().await;
    drop(server);
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mpim-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

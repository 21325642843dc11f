//! XMPP for `im-bench --target ejabberd`: one user's client-to-server stream on plaintext
//! TCP: SASL PLAIN, resource binding, a session, stream management (XEP-0198) and initial
//! presence, then chat messages to its partner's bare JID.
//!
//! Each message is followed by a request `<r/>`; the server's `<a h='n'/>` acknowledges
//! every stanza up to the n-th this client sent since `<enable/>`, which is how a send's ack
//! is found. A delivery is a `<message>` with a body. The client counts the stanzas it
//! receives and answers the server's `<r/>` with that count.

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use super::peer::{self, Event, Peer, Speak};
use super::xml::{self, Element, Item};

const SM: &str = "urn:xmpp:sm:3";

/// Who logs in, and where.
#[derive(Debug, Clone, Copy)]
pub struct Account<'a> {
    /// The server's domain (the host part of every JID).
    pub domain: &'a str,
    /// Start of every user name: user `n` is `<prefix>-<n>`.
    pub prefix: &'a str,
    /// Every user's password.
    pub password: &'a str,
}

/// Logs user `index` in over `stream` and readies the stream for load.
///
/// # Errors
/// When the server refuses a step, speaks something unexpected, or the connection fails.
pub async fn open(stream: TcpStream, account: Account<'_>, index: usize) -> anyhow::Result<Peer> {
    let mut steps = Steps {
        stream,
        input: Vec::new(),
    };
    let user = format!("{}-{index}", account.prefix);
    steps.send(&header(account.domain)).await?;
    let features = steps.features().await?;
    let plain = features.child("mechanisms").is_some_and(|mechanisms| {
        mechanisms
            .children
            .iter()
            .any(|mechanism| mechanism.text == "PLAIN")
    });
    if !plain {
        bail!("the server does not offer SASL PLAIN: {features:?}");
    }
    let credentials = base64(format!("\0{user}\0{}", account.password).as_bytes());
    steps
        .send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{credentials}</auth>"
        ))
        .await?;
    let answer = steps.element().await?;
    if answer.name != "success" {
        bail!("{user}: authentication failed: {answer:?}");
    }
    steps.send(&header(account.domain)).await?;
    let features = steps.features().await?;
    if features.child("bind").is_none() {
        bail!("the server offers no resource binding: {features:?}");
    }
    steps
        .iq(
            "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>bench</resource></bind></iq>",
        )
        .await?;
    if features.child("session").is_some() {
        steps
            .iq("<iq type='set' id='session'>\
                 <session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>")
            .await?;
    }
    if features.child("sm").is_none() {
        bail!("the server offers no stream management: {features:?}");
    }
    steps.send(&format!("<enable xmlns='{SM}'/>")).await?;
    let enabled = steps.element().await?;
    if enabled.name != "enabled" {
        bail!("stream management refused: {enabled:?}");
    }
    // Initial presence, so that messages to the bare JID reach this resource; it is the
    // first stanza stream management counts.
    steps.send("<presence/>").await?;
    let session = Session {
        domain: account.domain.to_string(),
        prefix: account.prefix.to_string(),
        sent: 1,
        received: 0,
        scratch: String::new(),
    };
    Ok(Peer {
        stream: steps.stream,
        input: steps.input,
        speaker: Box::new(session),
    })
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' xml:lang='en' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
}

/// The handshake, one exchange at a time.
struct Steps {
    stream: TcpStream,
    input: Vec<u8>,
}

impl Steps {
    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.stream
            .write_all(text.as_bytes())
            .await
            .context("writing to the server")
    }

    async fn item(&mut self) -> anyhow::Result<Item> {
        loop {
            if let Some((item, used)) = xml::read_item(&self.input)? {
                self.input.drain(..used);
                return Ok(item);
            }
            peer::read_more(&mut self.stream, &mut self.input).await?;
        }
    }

    async fn element(&mut self) -> anyhow::Result<Element> {
        match self.item().await? {
            Item::Element(element) if element.local_name() == "error" => {
                bail!("stream error: {element:?}")
            }
            Item::Element(element) => Ok(element),
            other => bail!("expected an element, got {other:?}"),
        }
    }

    /// The server's stream header, then its features.
    async fn features(&mut self) -> anyhow::Result<Element> {
        let Item::Open(_) = self.item().await? else {
            bail!("expected the server's stream header");
        };
        let features = self.element().await?;
        if features.local_name() != "features" {
            bail!("expected stream features, got {features:?}");
        }
        Ok(features)
    }

    async fn iq(&mut self, request: &str) -> anyhow::Result<Element> {
        self.send(request).await?;
        let answer = self.element().await?;
        if answer.name != "iq" || answer.attr("type") != Some("result") {
            bail!("request refused: {answer:?}");
        }
        Ok(answer)
    }
}

/// One logged-in stream during the load.
struct Session {
    domain: String,
    prefix: String,
    /// Stanzas sent since `<enable/>`.
    sent: u64,
    /// Stanzas received since `<enabled/>`.
    received: u64,
    scratch: String,
}

impl Speak for Session {
    fn send(&mut self, to: usize, body: &str, out: &mut Vec<u8>) -> u64 {
        self.sent += 1;
        let text = &mut self.scratch;
        text.clear();
        let _ = write!(
            text,
            "<message to='{}-{to}@{}' type='chat' id='m{}'><body>",
            self.prefix, self.domain, self.sent
        );
        xml::escape(body, text);
        let _ = write!(text, "</body></message><r xmlns='{SM}'/>");
        out.extend_from_slice(text.as_bytes());
        self.sent
    }

    fn read(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        event: &mut dyn FnMut(Event<'_>),
    ) -> anyhow::Result<usize> {
        let mut used = 0;
        while let Some((item, len)) = xml::read_item(&input[used..])? {
            used += len;
            let element = match item {
                Item::Element(element) => element,
                Item::Open(_) => bail!("a second stream header"),
                Item::Close => bail!("the server closed the stream"),
            };
            match element.name.as_str() {
                "a" => {
                    let h = element.attr("h").and_then(|h| h.parse().ok());
                    event(Event::AckedThrough(h.context("an <a/> without a valid h")?));
                }
                "r" => {
                    let received = self.received;
                    let _ = write!(self.scratch_clear(), "<a xmlns='{SM}' h='{received}'/>");
                    out.extend_from_slice(self.scratch.as_bytes());
                }
                "message" => {
                    self.received += 1;
                    let body = element
                        .child("body")
                        .filter(|_| element.attr("type") != Some("error"));
                    if let Some(body) = body {
                        event(Event::Delivered(body.text.as_bytes()));
                    }
                }
                "presence" => self.received += 1,
                "iq" => {
                    self.received += 1;
                    self.answer_iq(&element, out);
                }
                "stream:error" => bail!("stream error: {element:?}"),
                _ => {}
            }
        }
        Ok(used)
    }

    fn keepalive(&mut self, out: &mut Vec<u8>) {
        out.push(b' ');
    }
}

impl Session {
    fn scratch_clear(&mut self) -> &mut String {
        self.scratch.clear();
        &mut self.scratch
    }

    /// Answers a request from the server (a ping, say) with an empty result.
    fn answer_iq(&mut self, iq: &Element, out: &mut Vec<u8>) {
        if !matches!(iq.attr("type"), Some("get" | "set")) {
            return;
        }
        let text = self.scratch_clear();
        text.push_str("<iq type='result' id='");
        xml::escape(iq.attr("id").unwrap_or_default(), text);
        if let Some(from) = iq.attr("from") {
            text.push_str("' to='");
            xml::escape(from, text);
        }
        text.push_str("'/>");
        out.extend_from_slice(text.as_bytes());
    }
}

/// Standard base64 with padding (RFC 4648), for SASL.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            domain: "localhost".into(),
            prefix: "p".into(),
            sent: 1,
            received: 0,
            scratch: String::new(),
        }
    }

    #[test]
    fn base64_matches_rfc_4648() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(b"\0u\0pw"), "AHUAcHc=");
    }

    #[test]
    fn a_send_is_a_message_and_a_request_counted_as_one_stanza() {
        let mut session = session();
        let mut out = Vec::new();
        assert_eq!(session.send(7, "12 x<y", &mut out), 2);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<message to='p-7@localhost' type='chat' id='m2'><body>12 x&lt;y</body></message>\
             <r xmlns='urn:xmpp:sm:3'/>"
        );
    }

    #[test]
    fn reads_acks_deliveries_and_requests() {
        let mut session = session();
        let input = b"<a xmlns='urn:xmpp:sm:3' h='5'/>\
            <message from='p-1@localhost/bench' to='p-0@localhost' type='chat'><body>9 t:1:0</body></message>\
            <presence from='p-0@localhost/bench'/>\
            <message type='error'><body>bounced</body></message>\
            <iq type='get' id='ping1' from='localhost'><ping xmlns='urn:xmpp:ping'/></iq>\
            <r xmlns='urn:xmpp:sm:3'/> <message><bo";
        let mut events = Vec::new();
        let mut out = Vec::new();
        let used = session
            .read(input, &mut out, &mut |event| {
                events.push(match event {
                    Event::Delivered(body) => String::from_utf8_lossy(body).into_owned(),
                    Event::Acked(key) => format!("acked {key}"),
                    Event::AckedThrough(key) => format!("through {key}"),
                })
            })
            .unwrap();
        assert_eq!(&input[used..], b" <message><bo");
        assert_eq!(events, ["through 5", "9 t:1:0"]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<iq type='result' id='ping1' to='localhost'/><a xmlns='urn:xmpp:sm:3' h='4'/>"
        );
    }

    #[test]
    fn errors_and_the_end_of_the_stream_are_errors() {
        let bad: &[&[u8]] = &[
            b"<stream:error><conflict/></stream:error>",
            b"</stream:stream>",
            b"<a h='x'/>",
            b"<a/>",
            b"<message></mess>",
        ];
        for input in bad {
            let read = session().read(input, &mut Vec::new(), &mut |_| {});
            assert!(read.is_err(), "{:?}", String::from_utf8_lossy(input));
        }
    }
}

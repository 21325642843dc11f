//! A small incremental XML reader, enough for an XMPP server's side of a stream: the
//! stream header, then one complete top-level element at a time, then the stream's end.
//!
//! It keeps no state between calls: [`read_item`] is given everything received and not yet
//! consumed, and says how many bytes the next item took (or that more are needed). Stanzas
//! are small, so reading a partial one again when the rest arrives costs little. Namespaces
//! are not resolved: names are compared as written, prefix included. DTDs are refused;
//! comments and processing instructions are skipped.

use std::fmt;

/// Deepest nesting of elements accepted inside a top-level element.
pub const MAX_DEPTH: usize = 16;

/// Largest top-level element accepted, in bytes.
pub const MAX_ELEMENT: usize = 1 << 20;

/// Bytes that are not XML this reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(&'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed XML: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// An element with its attributes (values unescaped), children and text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// The name as written (`stream:features`, `message`).
    pub name: String,
    /// Attributes in document order, `xmlns` ones included.
    pub attrs: Vec<(String, String)>,
    /// Child elements in document order.
    pub children: Vec<Element>,
    /// The text directly inside it, all pieces joined.
    pub text: String,
}

impl Element {
    /// The name without its prefix.
    pub fn local_name(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or_default()
    }

    /// The value of attribute `name`.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The first child whose local name is `name`.
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children
            .iter()
            .find(|child| child.local_name() == name)
    }
}

/// One step of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// The stream's opening tag (an element named `stream`, any prefix, left open).
    Open(Element),
    /// A complete top-level element.
    Element(Element),
    /// A closing tag at the top level: the end of the stream.
    Close,
}

/// The next item of `input` and the bytes it took (whitespace and the XML declaration
/// before it included); `None` when `input` holds no complete item yet.
///
/// # Errors
/// When `input` is not XML this reader accepts, or an element grows past [`MAX_ELEMENT`].
pub fn read_item(input: &[u8]) -> Result<Option<(Item, usize)>, Malformed> {
    let mut cursor = Cursor { input, pos: 0 };
    match cursor.item() {
        Ok(item) => Ok(Some((item, cursor.pos))),
        Err(Stop::More) if input.len() >= MAX_ELEMENT => Err(Malformed("element too large")),
        Err(Stop::More) => Ok(None),
        Err(Stop::Bad(why)) => Err(Malformed(why)),
    }
}

/// Why reading stopped.
enum Stop {
    /// The input ends inside the item.
    More,
    /// The input is not acceptable.
    Bad(&'static str),
}

type Step<T> = Result<T, Stop>;

struct Cursor<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn item(&mut self) -> Step<Item> {
        loop {
            self.skip_whitespace();
            match self.rest() {
                [] | [b'<'] => return Err(Stop::More),
                [b'<', b'?', ..] => self.skip_past(b"?>")?,
                [b'<', b'!', ..] => self.comment()?,
                [b'<', b'/', ..] => {
                    self.end_tag()?;
                    return Ok(Item::Close);
                }
                [b'<', ..] => break,
                _ => return Err(Stop::Bad("text outside any element")),
            }
        }
        let (mut element, closed) = self.start_tag()?;
        if !closed && element.local_name() == "stream" {
            return Ok(Item::Open(element));
        }
        if !closed {
            self.content(&mut element, 1)?;
        }
        Ok(Item::Element(element))
    }

    fn rest(&self) -> &[u8] {
        &self.input[self.pos..]
    }

    fn peek(&self) -> Step<u8> {
        self.input.get(self.pos).copied().ok_or(Stop::More)
    }

    fn expect(&mut self, byte: u8, why: &'static str) -> Step<()> {
        if self.peek()? != byte {
            return Err(Stop::Bad(why));
        }
        self.pos += 1;
        Ok(())
    }

    fn skip_whitespace(&mut self) {
        while self
            .input
            .get(self.pos)
            .is_some_and(u8::is_ascii_whitespace)
        {
            self.pos += 1;
        }
    }

    /// Moves past the next `end`.
    fn skip_past(&mut self, end: &[u8]) -> Step<()> {
        let at = find(self.rest(), end).ok_or(Stop::More)?;
        self.pos += at + end.len();
        Ok(())
    }

    fn comment(&mut self) -> Step<()> {
        if !b"<!--".starts_with(&self.rest()[..self.rest().len().min(4)]) {
            return Err(Stop::Bad("declarations are not accepted"));
        }
        if self.rest().len() < 4 {
            return Err(Stop::More);
        }
        self.skip_past(b"-->")
    }

    fn name(&mut self) -> Step<String> {
        let start = self.pos;
        loop {
            match self.peek()? {
                b if b.is_ascii_whitespace() || b"/>=<'\"".contains(&b) => break,
                _ => self.pos += 1,
            }
        }
        if start == self.pos {
            return Err(Stop::Bad("empty name"));
        }
        utf8(&self.input[start..self.pos]).map(str::to_owned)
    }

    /// A start tag from its `<`; whether it closed itself (`/>`).
    fn start_tag(&mut self) -> Step<(Element, bool)> {
        self.expect(b'<', "expected <")?;
        let mut element = Element {
            name: self.name()?,
            ..Element::default()
        };
        loop {
            self.skip_whitespace();
            match self.peek()? {
                b'>' => {
                    self.pos += 1;
                    return Ok((element, false));
                }
                b'/' => {
                    self.pos += 1;
                    self.expect(b'>', "expected > after /")?;
                    return Ok((element, true));
                }
                _ => {
                    let key = self.name()?;
                    self.skip_whitespace();
                    self.expect(b'=', "expected = after an attribute name")?;
                    self.skip_whitespace();
                    let quote = self.peek()?;
                    if quote != b'\'' && quote != b'"' {
                        return Err(Stop::Bad("unquoted attribute value"));
                    }
                    self.pos += 1;
                    let len = self
                        .rest()
                        .iter()
                        .position(|&b| b == quote)
                        .ok_or(Stop::More)?;
                    let raw = &self.input[self.pos..self.pos + len];
                    if raw.contains(&b'<') {
                        return Err(Stop::Bad("< in an attribute value"));
                    }
                    let mut value = String::new();
                    unescape(raw, &mut value)?;
                    self.pos += len + 1;
                    element.attrs.push((key, value));
                }
            }
        }
    }

    /// An end tag from its `<`; its name.
    fn end_tag(&mut self) -> Step<String> {
        self.pos += 2;
        let name = self.name()?;
        self.skip_whitespace();
        self.expect(b'>', "expected > in an end tag")?;
        Ok(name)
    }

    /// What is inside `element` after its start tag, through its end tag.
    fn content(&mut self, element: &mut Element, depth: usize) -> Step<()> {
        loop {
            let rest = self.rest();
            match rest {
                [] | [b'<'] => return Err(Stop::More),
                [b'<', b'/', ..] => {
                    if self.end_tag()? != element.name {
                        return Err(Stop::Bad("end tag does not match its start tag"));
                    }
                    return Ok(());
                }
                [b'<', b'?', ..] => self.skip_past(b"?>")?,
                [b'<', b'!', b'[', ..] => self.cdata(&mut element.text)?,
                [b'<', b'!', ..] => self.comment()?,
                [b'<', ..] => {
                    if depth >= MAX_DEPTH {
                        return Err(Stop::Bad("elements nested too deep"));
                    }
                    let (mut child, closed) = self.start_tag()?;
                    if !closed {
                        self.content(&mut child, depth + 1)?;
                    }
                    element.children.push(child);
                }
                _ => {
                    let len = rest.iter().position(|&b| b == b'<').ok_or(Stop::More)?;
                    unescape(&rest[..len], &mut element.text)?;
                    self.pos += len;
                }
            }
        }
    }

    fn cdata(&mut self, text: &mut String) -> Step<()> {
        const OPEN: &[u8] = b"<![CDATA[";
        let rest = self.rest();
        if !OPEN.starts_with(&rest[..rest.len().min(OPEN.len())]) {
            return Err(Stop::Bad("declarations are not accepted"));
        }
        let inside = rest.get(OPEN.len()..).ok_or(Stop::More)?;
        let len = find(inside, b"]]>").ok_or(Stop::More)?;
        text.push_str(utf8(&inside[..len])?);
        self.pos += OPEN.len() + len + 3;
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn utf8(bytes: &[u8]) -> Step<&str> {
    std::str::from_utf8(bytes).map_err(|_| Stop::Bad("not UTF-8"))
}

/// Appends `raw` to `out` with its entity and character references replaced.
fn unescape(raw: &[u8], out: &mut String) -> Step<()> {
    let mut rest = utf8(raw)?;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let semi = rest[amp..]
            .find(';')
            .ok_or(Stop::Bad("unterminated reference"))?;
        let reference = &rest[amp + 1..amp + semi];
        let c = match reference {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                let code = if let Some(hex) = reference.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()
                } else if let Some(decimal) = reference.strip_prefix('#') {
                    decimal.parse().ok()
                } else {
                    None
                };
                code.and_then(char::from_u32)
                    .ok_or(Stop::Bad("unknown reference"))?
            }
        };
        out.push(c);
        rest = &rest[amp + semi + 1..];
    }
    out.push_str(rest);
    Ok(())
}

/// Appends `text` to `out` escaped for use in text or a quoted attribute value.
pub fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(mut input: &[u8]) -> Vec<Item> {
        let mut items = Vec::new();
        while let Some((item, used)) = read_item(input).unwrap() {
            items.push(item);
            input = &input[used..];
        }
        assert!(input.iter().all(u8::is_ascii_whitespace), "left {input:?}");
        items
    }

    const STREAM: &[u8] = b"<?xml version='1.0'?><stream:stream id='1' \
        xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>\
        <stream:features><mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
        <mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1</mechanism></mechanisms>\
        </stream:features> \n<a xmlns='urn:xmpp:sm:3' h=\"42\"/>\
        <message from='a@h/r' type='chat'><body>1 &lt;2&gt; &amp; &#x41;&#66;</body>\
        <!-- note --><x><![CDATA[<raw>]]></x></message></stream:stream>";

    #[test]
    fn reads_a_stream_item_by_item() {
        let items = items(STREAM);
        assert_eq!(items.len(), 5);
        let Item::Open(open) = &items[0] else {
            panic!("{:?}", items[0])
        };
        assert_eq!(open.attr("id"), Some("1"));
        let Item::Element(features) = &items[1] else {
            panic!()
        };
        assert_eq!(features.local_name(), "features");
        let mechanisms = features.child("mechanisms").unwrap();
        let names: Vec<_> = mechanisms.children.iter().map(|m| &m.text[..]).collect();
        assert_eq!(names, ["PLAIN", "SCRAM-SHA-1"]);
        let Item::Element(ack) = &items[2] else {
            panic!()
        };
        assert_eq!((ack.name.as_str(), ack.attr("h")), ("a", Some("42")));
        let Item::Element(message) = &items[3] else {
            panic!()
        };
        assert_eq!(message.child("body").unwrap().text, "1 <2> & AB");
        assert_eq!(message.child("x").unwrap().text, "<raw>");
        assert_eq!(items[4], Item::Close);
    }

    #[test]
    fn every_prefix_of_a_stream_asks_for_more_and_never_fails() {
        let (_, used) = read_item(STREAM).unwrap().unwrap();
        for end in 0..STREAM.len() {
            let read = read_item(&STREAM[..end]);
            assert!(read.is_ok(), "prefix {end}: {read:?}");
            // Until the stream tag's '>', nothing is complete.
            assert!(end >= used || read.unwrap().is_none(), "prefix {end}");
        }
        // Past the header, the features element needs its end tag.
        let end = find(STREAM, b"</stream:features>").unwrap();
        assert!(read_item(&STREAM[used..end]).unwrap().is_none());
    }

    #[test]
    fn bad_input_is_an_error() {
        let bad: &[&[u8]] = &[
            b"hello",
            b"<a></b>",
            b"<a x=1/>",
            b"<a x='<'/>",
            b"<a>&bogus;</a>",
            b"<a>&#xZZ;</a>",
            b"<a>& </a>",
            b"<!DOCTYPE a>",
            b"<a><!ENTITY x></a>",
            b"<a>\xff</a>",
            b"<>",
            b"< a/>",
            b"<a b='1' / >",
        ];
        for input in bad {
            assert!(
                read_item(input).is_err(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn deep_or_huge_input_is_refused() {
        let deep = "<a>".repeat(MAX_DEPTH + 2);
        assert!(read_item(deep.as_bytes()).is_err());
        let shallow = "<a>".repeat(MAX_DEPTH - 1);
        assert!(read_item(shallow.as_bytes()).unwrap().is_none());
        let mut huge = b"<a>".to_vec();
        huge.resize(MAX_ELEMENT, b'x');
        assert!(read_item(&huge).is_err());
    }

    #[test]
    fn escaping_round_trips() {
        let mut escaped = String::new();
        escape("a<b>&'\"c", &mut escaped);
        let xml = format!("<m v='{escaped}'>{escaped}</m>");
        let Some((Item::Element(element), _)) = read_item(xml.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(element.attr("v"), Some("a<b>&'\"c"));
        assert_eq!(element.text, "a<b>&'\"c");
    }
}

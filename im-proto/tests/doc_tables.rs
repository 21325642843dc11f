//! docs/client-protocol.md against the schema it documents (the descriptor set the build
//! compiled): its command table names every `Request` command with its field number and
//! message, its reply and push tables every `ServerMessage` body, its enum table every value
//! of every enum a client meets, and nothing else; its worked JSON examples parse, and show
//! every command and every body at least once.

use std::collections::{BTreeMap, BTreeSet};

use im_proto::client::{Request, ServerMessage};
use prost::Message as _;
use prost_types::field_descriptor_proto::Type;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorSet};

const DOC: &str = include_str!("../../docs/client-protocol.md");
const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mpim.descriptor.bin"));

/// The schema's messages and enums by full name (`.mpim.client.Request`).
struct Schema {
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, EnumDescriptorProto>,
}

impl Schema {
    fn load() -> Schema {
        let set = FileDescriptorSet::decode(DESCRIPTORS).unwrap();
        let mut schema = Schema {
            messages: BTreeMap::new(),
            enums: BTreeMap::new(),
        };
        for file in set.file {
            let package = format!(".{}", file.package());
            for message in file.message_type {
                schema.add_message(&package, message);
            }
            for e in file.enum_type {
                schema.enums.insert(format!("{package}.{}", e.name()), e);
            }
        }
        schema
    }

    fn add_message(&mut self, scope: &str, message: DescriptorProto) {
        let name = format!("{scope}.{}", message.name());
        for nested in &message.nested_type {
            self.add_message(&name, nested.clone());
        }
        for e in &message.enum_type {
            self.enums.insert(format!("{name}.{}", e.name()), e.clone());
        }
        self.messages.insert(name, message);
    }

    fn message(&self, full_name: &str) -> &DescriptorProto {
        &self.messages[full_name]
    }

    /// The fields of `message`'s oneof `oneof`: name → (number, full type name).
    fn oneof(&self, message: &str, oneof: &str) -> BTreeMap<String, (i32, String)> {
        let message = self.message(message);
        let index = message
            .oneof_decl
            .iter()
            .position(|o| o.name() == oneof)
            .unwrap();
        message
            .field
            .iter()
            .filter(|f| f.oneof_index == Some(i32::try_from(index).unwrap()))
            .map(|f| (f.name().to_owned(), (f.number(), f.type_name().to_owned())))
            .collect()
    }

    /// The enums reachable from `roots` through message fields.
    fn enums_reachable(&self, roots: &[&str]) -> BTreeSet<String> {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut todo: Vec<String> = roots.iter().map(|r| (*r).to_owned()).collect();
        let mut enums = BTreeSet::new();
        while let Some(name) = todo.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            for field in &self.message(&name).field {
                match field.r#type() {
                    Type::Message => todo.push(field.type_name().to_owned()),
                    Type::Enum => {
                        enums.insert(field.type_name().to_owned());
                    }
                    _ => {}
                }
            }
        }
        enums
    }
}

/// The last part of a full name: `.mpim.SendRequest` → `SendRequest`.
fn short(full_name: &str) -> &str {
    full_name.rsplit('.').next().unwrap()
}

/// A Markdown table: its header cells and rows, backticks kept.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(|c| c.trim().to_owned()).collect()
}

fn tables(doc: &str) -> Vec<Table> {
    let mut tables = Vec::new();
    let mut lines = doc.lines().peekable();
    while let Some(line) = lines.next() {
        if !line.starts_with('|') {
            continue;
        }
        let header = cells(line);
        let mut rows = Vec::new();
        while let Some(next) = lines.next_if(|l| l.starts_with('|')) {
            if !next.starts_with("|---") {
                rows.push(cells(next));
            }
        }
        tables.push(Table { header, rows });
    }
    tables
}

/// The one table whose header is `header`.
fn table<'a>(tables: &'a [Table], header: &[&str]) -> &'a Table {
    let found: Vec<&Table> = tables.iter().filter(|t| t.header == header).collect();
    assert_eq!(found.len(), 1, "tables headed {header:?}");
    found[0]
}

/// The text between backticks in `cell`.
fn spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// `name {a, b: […], c}` → (`name`, [`a`, `b`, `c`]); fields are empty without braces.
fn name_and_fields(span: &str) -> (&str, Vec<&str>) {
    let Some((name, rest)) = span.split_once(" {") else {
        return (span.trim(), Vec::new());
    };
    let inner = rest.strip_suffix('}').unwrap_or(rest);
    let fields = inner
        .split(',')
        .map(|f| f.split(':').next().unwrap().trim())
        .filter(|f| !f.is_empty())
        .collect();
    (name.trim(), fields)
}

/// Asserts the fields a cell names belong to `message`.
fn assert_fields(schema: &Schema, message: &str, fields: &[&str], row: &[String]) {
    let declared: BTreeSet<&str> = schema
        .message(message)
        .field
        .iter()
        .map(|f| f.name())
        .collect();
    for field in fields {
        assert!(
            declared.contains(field),
            "{row:?}: {message} has no field {field}"
        );
    }
}

/// Asserts the doc lists what the schema declares, naming the differences.
fn assert_same<T: Ord + std::fmt::Debug>(listed: &BTreeSet<T>, declared: &BTreeSet<T>, what: &str) {
    let missing: Vec<&T> = declared.difference(listed).collect();
    let extra: Vec<&T> = listed.difference(declared).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: in the schema, not in the doc: {missing:?}; in the doc, not in the schema: {extra:?}"
    );
}

fn number(cell: &str, row: &[String]) -> i32 {
    cell.parse()
        .unwrap_or_else(|_| panic!("{row:?}: {cell:?} is not a number"))
}

#[test]
fn the_command_table_is_the_request_oneof() {
    let schema = Schema::load();
    let tables = tables(DOC);
    let commands = schema.oneof(".mpim.client.Request", "command");
    let bodies = schema.oneof(".mpim.client.ServerMessage", "body");
    let table = table(
        &tables,
        &["#", "command (`Request` field)", "carries", "reply body"],
    );
    let mut listed = BTreeSet::new();
    for row in &table.rows {
        let name = spans(&row[1])[0];
        let (number, type_name) = commands
            .get(name)
            .unwrap_or_else(|| panic!("{row:?}: Request has no command {name}"));
        assert_eq!(self::number(&row[0], row), *number, "{row:?}");
        // The message it carries, and the fields named after it.
        let carried = spans(&row[2]);
        assert_eq!(name_and_fields(carried[0]).0, short(type_name), "{row:?}");
        for span in carried {
            let (message, fields) = name_and_fields(span);
            if message == short(type_name) {
                assert_fields(&schema, type_name, &fields, row);
            }
        }
        // The reply: a body of ServerMessage, with its fields.
        let (reply, fields) = name_and_fields(spans(&row[3])[0]);
        let (_, reply_type) = bodies
            .get(reply)
            .unwrap_or_else(|| panic!("{row:?}: ServerMessage has no body {reply}"));
        assert_fields(&schema, reply_type, &fields, row);
        assert!(listed.insert((name, *number)), "{name} twice");
    }
    let declared: BTreeSet<(&str, i32)> = commands
        .iter()
        .map(|(name, (number, _))| (name.as_str(), *number))
        .collect();
    assert_same(&listed, &declared, "the command table and Request's oneof");
}

#[test]
fn the_reply_and_push_tables_are_the_server_message_oneof() {
    let schema = Schema::load();
    let tables = tables(DOC);
    let bodies = schema.oneof(".mpim.client.ServerMessage", "body");
    let replies = table(
        &tables,
        &["#", "reply body (`ServerMessage` field)", "type", "answers"],
    );
    let pushes = table(
        &tables,
        &["#", "push body (`ServerMessage` field)", "type", "when"],
    );
    let mut listed = BTreeSet::new();
    for row in replies.rows.iter().chain(&pushes.rows) {
        let name = spans(&row[1])[0];
        let (number, type_name) = bodies
            .get(name)
            .unwrap_or_else(|| panic!("{row:?}: ServerMessage has no body {name}"));
        assert_eq!(self::number(&row[0], row), *number, "{row:?}");
        assert_eq!(spans(&row[2]), [short(type_name)], "{row:?}");
        assert!(listed.insert((name, *number)), "{name} twice");
    }
    let declared: BTreeSet<(&str, i32)> = bodies
        .iter()
        .map(|(name, (number, _))| (name.as_str(), *number))
        .collect();
    assert_same(
        &listed,
        &declared,
        "the reply and push tables and the body oneof",
    );
    // What the command table gives as replies are reply bodies, not pushes.
    let reply_names: BTreeSet<&str> = replies.rows.iter().map(|r| spans(&r[1])[0]).collect();
    let commands = table(
        &tables,
        &["#", "command (`Request` field)", "carries", "reply body"],
    );
    for row in &commands.rows {
        let reply = name_and_fields(spans(&row[3])[0]).0;
        assert!(reply_names.contains(reply), "{row:?}: {reply} is no reply");
    }
}

#[test]
fn the_enum_table_is_every_enum_a_client_meets() {
    let schema = Schema::load();
    let tables = tables(DOC);
    let table = table(&tables, &["enum", "value", "number", "meaning"]);
    let mut listed: BTreeSet<(String, String, i32)> = BTreeSet::new();
    for row in &table.rows {
        let (e, value) = (spans(&row[0]), spans(&row[1]));
        assert_eq!((e.len(), value.len()), (1, 1), "{row:?}");
        let entry = (e[0].to_owned(), value[0].to_owned(), number(&row[2], row));
        assert!(!row[3].is_empty(), "{row:?}: no meaning");
        assert!(listed.insert(entry), "{row:?} twice");
    }
    let reachable = schema.enums_reachable(&[".mpim.client.Request", ".mpim.client.ServerMessage"]);
    let declared: BTreeSet<(String, String, i32)> = reachable
        .iter()
        .flat_map(|full| {
            let e = &schema.enums[full];
            e.value
                .iter()
                .map(|v| (short(full).to_owned(), v.name().to_owned(), v.number()))
        })
        .collect();
    assert_same(&listed, &declared, "the enum table and the schema's enums");
}

#[test]
fn the_error_table_names_codes_by_their_numbers() {
    let schema = Schema::load();
    let tables = tables(DOC);
    let table = table(&tables, &["code", "meaning for a client"]);
    let codes: BTreeMap<&str, i32> = schema.enums[".mpim.client.Code"]
        .value
        .iter()
        .map(|v| (v.name(), v.number()))
        .collect();
    for row in &table.rows {
        // `NAME` (n), `NAME` (n), …: each name, then its number in the text after it.
        let parts: Vec<&str> = row[0].split('`').collect();
        assert!(parts.len() >= 3, "{row:?}: no code");
        for pair in parts[1..].chunks(2) {
            let (name, after) = (pair[0], pair.get(1).copied().unwrap_or(""));
            let n = after
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once(')'))
                .map(|(n, _)| n)
                .unwrap_or_else(|| panic!("{row:?}: no number after {name}"));
            assert_eq!(
                codes.get(name),
                Some(&number(n, row)),
                "{row:?}: {name} ({n})"
            );
        }
    }
}

/// The JSON examples: lines `→ {…}` (a request) and `← {…}` (a server message), possibly
/// after a speaker's name (`alice → {…}`). A request that does not parse must be followed by
/// the gateway's answer to it: "not a valid request: " and the parser's very words.
fn examples(doc: &str) -> (Vec<Request>, Vec<ServerMessage>) {
    let (mut requests, mut messages) = (Vec::new(), Vec::new());
    let mut refused: Option<(String, String)> = None;
    for line in doc.lines() {
        if let Some((_, json)) = line.split_once("→ {") {
            assert!(refused.is_none(), "{refused:?}: no answer shown");
            match serde_json::from_str(&format!("{{{json}")) {
                Ok(request) => requests.push(request),
                Err(err) => refused = Some((line.to_owned(), err.to_string())),
            }
        } else if let Some((_, json)) = line.split_once("← {") {
            let message: ServerMessage = serde_json::from_str(&format!("{{{json}"))
                .unwrap_or_else(|err| panic!("{line}: not a ServerMessage: {err}"));
            if let Some((request, err)) = refused.take() {
                let error = message.error.as_ref().expect("an error");
                assert_eq!(
                    (message.id, error.message.as_str()),
                    (0, format!("not a valid request: {err}").as_str()),
                    "the answer to {request}"
                );
            }
            messages.push(message);
        }
    }
    assert!(refused.is_none(), "{refused:?}: no answer shown");
    (requests, messages)
}

/// The oneof case a message's JSON names besides `id` and `error`.
fn case(json: serde_json::Value) -> Option<String> {
    json.as_object()
        .unwrap()
        .keys()
        .find(|k| !matches!(k.as_str(), "id" | "error"))
        .cloned()
}

/// lowerCamelCase, as the JSON mapping writes field names.
fn camel(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn the_json_examples_parse_and_show_every_command_and_body() {
    let schema = Schema::load();
    let (requests, messages) = examples(DOC);
    let shown_commands: BTreeSet<String> = requests
        .iter()
        .filter_map(|r| case(serde_json::to_value(r).unwrap()))
        .collect();
    let shown_bodies: BTreeSet<String> = messages
        .iter()
        .filter_map(|m| case(serde_json::to_value(m).unwrap()))
        .collect();
    for (oneof, shown, message) in [
        (
            schema.oneof(".mpim.client.Request", "command"),
            &shown_commands,
            "Request",
        ),
        (
            schema.oneof(".mpim.client.ServerMessage", "body"),
            &shown_bodies,
            "ServerMessage",
        ),
    ] {
        let missing: Vec<String> = oneof
            .keys()
            .map(|name| camel(name))
            .filter(|name| !shown.contains(name))
            .collect();
        assert!(
            missing.is_empty(),
            "no JSON example of these {message} cases: {missing:?}"
        );
    }
}

//! What the gateway writes on the legacy protocol: `+OK …` and `-ERR …` replies and `MSG …`
//! lines, each exactly one line (texts escaped).

use std::fmt::Write as _;

/// The first line of every connection, as the original gateway wrote it (its terminal
/// client recognises `+OK welcome`).
pub(crate) const WELCOME: &str = "+OK welcome. Commands: REGISTER/LOGIN/SEND/PULL\n";
/// The reason of the reply to a command that needs a login, before one: the original's
/// words, which its client shows as they are.
pub(crate) const NOT_LOGIN: &str = "not login";
/// The last line of PULL's reply, always (the original client compares it whole).
pub(crate) const PULL_DONE: &str = "+OK pull_done\n";
/// The line before [`PULL_DONE`] when messages are left for the next PULL.
pub(crate) const PULL_MORE: &str = "+OK more: PULL again for the rest\n";

use im_common::ids::ConversationId;
use im_proto::ChatMessage;

/// `text` with `\` → `\\`, newline → `\n`, carriage return → `\r`, so that it stays on one
/// line.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

/// `+OK` and, when there is one, a space and `detail`, as a line.
pub(crate) fn ok(detail: impl std::fmt::Display) -> String {
    let detail = detail.to_string();
    if detail.is_empty() {
        "+OK\n".to_owned()
    } else {
        format!("+OK {}\n", escape(&detail))
    }
}

/// `-ERR <reason>` as a line.
pub(crate) fn err(reason: &str) -> String {
    format!("-ERR {}\n", escape(reason))
}

/// The `MSG` line of a chat message:
/// `MSG id=<msg_id> from=<uid> ts=<ms> [group=<gid> ]text=<text>`.
pub(crate) fn message(message: &ChatMessage) -> String {
    let mut line = format!(
        "MSG id={} from={} ts={}",
        message.msg_id, message.sender_id, message.server_time_ms
    );
    if let Ok(ConversationId::Group(group)) = ConversationId::parse(&message.conversation_id) {
        let _ = write!(line, " group={group}");
    }
    let _ = writeln!(line, " text={}", escape(&message.body));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_one_line() {
        assert_eq!(escape("a\\b\nc\r\n"), "a\\\\b\\nc\\r\\n");
        let mut chat = ChatMessage {
            msg_id: 9,
            sender_id: 2,
            server_time_ms: 1000,
            conversation_id: ConversationId::direct(2, 3).to_string(),
            body: "hi\nthere".to_owned(),
            ..ChatMessage::default()
        };
        assert_eq!(message(&chat), "MSG id=9 from=2 ts=1000 text=hi\\nthere\n");
        chat.conversation_id = ConversationId::Group(5).to_string();
        assert_eq!(
            message(&chat),
            "MSG id=9 from=2 ts=1000 group=5 text=hi\\nthere\n"
        );
        assert_eq!(ok(""), "+OK\n");
        assert_eq!(ok(4), "+OK 4\n");
        assert_eq!(err("no\nway"), "-ERR no\\nway\n");
    }
}

//! How things look on the terminal: one line per event, times as `[HH:MM:SS]` (UTC).

use std::io::{IsTerminal as _, Write as _};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use im_client::im_proto::ChatMessage;

/// Whether stdout is a terminal: then a prompt stays on the last line.
fn terminal() -> bool {
    static TERMINAL: OnceLock<bool> = OnceLock::new();
    *TERMINAL.get_or_init(|| std::io::stdout().is_terminal())
}

/// Whether the prompt is on the last line, with nothing written after it.
static PROMPT_SHOWN: AtomicBool = AtomicBool::new(false);

/// Writes one line to stdout (over the prompt, on a terminal); a closed stdout is not
/// worth a panic.
pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    if terminal() {
        // Back to the start of the prompt's line, and clear it.
        let _ = write!(out, "\r\x1b[K");
    }
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    PROMPT_SHOWN.store(false, Ordering::Relaxed);
}

/// The person ended a line: the prompt they typed after is gone.
pub(crate) fn typed() {
    PROMPT_SHOWN.store(false, Ordering::Relaxed);
}

/// Shows `context> ` on a terminal, where the next line is typed, unless it is showing
/// already (an event that printed nothing leaves it as it is).
pub(crate) fn prompt(context: &str) {
    if terminal() && !PROMPT_SHOWN.swap(true, Ordering::Relaxed) {
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "{context}> ");
        let _ = out.flush();
    }
}

/// `[HH:MM:SS]` of a time in milliseconds since the epoch (now for 0).
pub(crate) fn clock(ms: i64) -> String {
    let ms = if ms > 0 { ms } else { now_ms() };
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "[{:02}:{:02}:{:02}]",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Who said it to whom, as the line shows it: `alice → you`, `you → alice`, `alice → #devs`.
pub(crate) struct Route<'a> {
    pub(crate) from: &'a str,
    pub(crate) to: &'a str,
}

/// The line of a message.
pub(crate) fn message_line(message: &ChatMessage, route: &Route<'_>, own: bool) -> String {
    let body = if message.recalled {
        "(recalled)".to_owned()
    } else if message.edited {
        format!("{} (edited)", message.body)
    } else {
        message.body.clone()
    };
    let time = clock(message.server_time_ms);
    let Route { from, to } = route;
    if own {
        let (seq, id) = (message.seq, message.msg_id);
        format!("{time} {from} → {to}: {body} (seq {seq}, #{id})")
    } else {
        format!("{time} {from} → {to}: {body}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_reads_hours_minutes_seconds() {
        assert_eq!(clock(0).len(), "[00:00:00]".len());
        assert_eq!(clock((12 * 3600 + 65) * 1000 + 999), "[12:01:05]");
        assert_eq!(clock(86_400_000 * 3 + 1000), "[00:00:01]");
    }

    #[test]
    fn own_lines_name_seq_and_id() {
        let message = ChatMessage {
            msg_id: 17,
            seq: 2,
            body: "hi".into(),
            server_time_ms: (12 * 3600 + 67) * 1000,
            ..ChatMessage::default()
        };
        let route = Route {
            from: "you",
            to: "alice",
        };
        assert_eq!(
            message_line(&message, &route, true),
            "[12:01:07] you → alice: hi (seq 2, #17)"
        );
        let recalled = ChatMessage {
            recalled: true,
            body: String::new(),
            ..message
        };
        let route = Route {
            from: "alice",
            to: "you",
        };
        assert_eq!(
            message_line(&recalled, &route, false),
            "[12:01:07] alice → you: (recalled)"
        );
    }
}

//! Input checks shared by the services: each returns `INVALID_ARGUMENT` with a message that
//! names the field and the rule.

use mprpc::Status;

/// Longest display name, group name or friend/join request message, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest profile bio or group description, in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Longest avatar reference (a URL), in bytes.
pub const MAX_AVATAR_BYTES: usize = 1024;
/// Longest client_msg_id or device id, in bytes.
pub const MAX_ID_BYTES: usize = 64;

/// A login name: 3 to 32 of `[A-Za-z0-9_.-]`.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the rule.
pub fn login_name(name: &str) -> Result<(), Status> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-');
    if (3..=32).contains(&name.len()) && name.chars().all(ok_char) {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "name must be 3 to 32 characters of A-Z, a-z, 0-9, '_', '.', '-'",
        ))
    }
}

/// A password: 8 to 128 bytes.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the rule.
pub fn password(password: &str) -> Result<(), Status> {
    if (8..=128).contains(&password.len()) {
        Ok(())
    } else {
        Err(Status::invalid_argument("password must be 8 to 128 bytes"))
    }
}

/// Free text of at most `max` bytes; `field` names it in the error. Any UTF-8 is accepted,
/// NUL bytes and emoji included: it is stored and returned byte for byte.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the field and its limit.
pub fn text(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.len() <= max {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field} is {} bytes, more than the limit of {max}",
            value.len()
        )))
    }
}

/// Free text of at most `max` bytes that must not be empty, nor white space alone (spaces,
/// tabs, line breaks and the other characters Unicode calls white space, such as U+00A0
/// and U+3000): such a message or name would show as nothing. Characters that are not
/// white space but draw nothing (U+200B, U+FEFF) are accepted.
///
/// # Errors
/// `INVALID_ARGUMENT` "`<field>` must not be empty or only white space" for empty text and white space alone
/// alike; the limit's error of [`text`].
pub fn non_empty_text(field: &str, value: &str, max: usize) -> Result<(), Status> {
    if value.trim().is_empty() {
        return Err(Status::invalid_argument(format!(
            "{field} must not be empty or only white space"
        )));
    }
    text(field, value, max)
}

/// An identifier chosen by a client (client_msg_id, device id): 1 to 64 printable ASCII bytes.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the field.
pub fn client_id(field: &str, value: &str) -> Result<(), Status> {
    if (1..=MAX_ID_BYTES).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field} must be 1 to {MAX_ID_BYTES} printable ASCII characters"
        )))
    }
}

/// A page size: 0 means `default`; above `max` is an error.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the limit.
pub fn limit(value: u32, default: u32, max: u32) -> Result<u32, Status> {
    match value {
        0 => Ok(default),
        n if n <= max => Ok(n),
        n => Err(Status::invalid_argument(format!(
            "limit {n} is above the maximum of {max}"
        ))),
    }
}

/// Longest gateway id, in bytes.
pub const MAX_GATEWAY_ID_BYTES: usize = 64;

/// A gateway id: 1 to [`MAX_GATEWAY_ID_BYTES`] bytes, without braces. The id is the Redis
/// Cluster hash tag of the gateway's keys (`{<gateway>}`): a brace would move the tag, and
/// the gateway's keys could land in different slots.
///
/// # Errors
/// `INVALID_ARGUMENT` naming `field`.
pub fn gateway_id(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() || value.len() > MAX_GATEWAY_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "{field} must be 1 to {MAX_GATEWAY_ID_BYTES} bytes"
        )));
    }
    if value.contains(['{', '}']) {
        return Err(Status::invalid_argument(format!(
            "{field} must not contain braces"
        )));
    }
    Ok(())
}

/// A user id given as a target (not the caller): nonzero.
///
/// # Errors
/// `INVALID_ARGUMENT` naming the field.
pub fn user_id(field: &str, value: u64) -> Result<u64, Status> {
    if value == 0 {
        Err(Status::invalid_argument(format!("{field} must be set")))
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_names() {
        for good in ["ada", "grace.hopper", "x_1-2", &"a".repeat(32)] {
            assert!(login_name(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "ab",
            "has space",
            "quote'",
            "émile",
            &"a".repeat(33),
            "nul\0x",
        ] {
            assert!(login_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn text_limits_count_bytes() {
        assert!(text("body", &"é".repeat(10), 20).is_ok());
        let err = text("body", &"é".repeat(11), 20).unwrap_err();
        assert_eq!(err.message(), "body is 22 bytes, more than the limit of 20");
        assert!(non_empty_text("name", "  ", 10).is_err());
        assert_eq!(limit(0, 100, 500).unwrap(), 100);
        assert!(limit(501, 100, 500).is_err());
    }

    #[test]
    fn text_of_white_space_alone_is_refused() {
        for blank in [
            "", " ", "   ", "\t", "\n", "\r\n", " \t\n ", "\u{a0}", "\u{3000}", "\u{2028}",
            "\u{85}",
        ] {
            let err = non_empty_text("body", blank, 100).unwrap_err();
            assert_eq!(err.code(), mprpc::Code::InvalidArgument, "{blank:?}");
            assert_eq!(
                err.message(),
                "body must not be empty or only white space",
                "{blank:?}"
            );
        }
        for shown in [".", " x ", "\u{200b}", "\u{feff}", "\0", "🙂"] {
            assert!(
                non_empty_text("body", shown, 100).is_ok(),
                "{shown:?} refused"
            );
        }
        // The size limit still applies to text that is not blank.
        assert!(non_empty_text("body", "xxxx", 3).is_err());
    }
}

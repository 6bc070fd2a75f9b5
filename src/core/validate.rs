//! Input rules shared by the server (which enforces them) and the client
//! (which checks early to give a quick answer; the server never trusts it).

use crate::core::error::{Error, Result};

/// Longest valid chat message, in characters (Unicode scalar values).
pub const MAX_MESSAGE_CHARS: usize = 128;
/// Longest valid participant name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// A valid message is 1 to [`MAX_MESSAGE_CHARS`] characters of UTF-8. Protobuf
/// `string` fields are already guaranteed to be UTF-8 when they reach us.
pub fn message(text: &str) -> Result<()> {
    let chars = text.chars().count();
    if chars == 0 {
        return Err(Error::InvalidMessage("message is empty".into()));
    }
    if chars > MAX_MESSAGE_CHARS {
        return Err(Error::InvalidMessage(format!(
            "message is {chars} characters long; the limit is {MAX_MESSAGE_CHARS}"
        )));
    }
    Ok(())
}

/// A valid name is 1 to [`MAX_NAME_CHARS`] printable characters with no
/// leading or trailing white space.
pub fn name(name: &str) -> Result<()> {
    let chars = name.chars().count();
    if name.trim().is_empty() {
        return Err(Error::InvalidName("name is empty".into()));
    }
    if chars > MAX_NAME_CHARS {
        return Err(Error::InvalidName(format!(
            "name is {chars} characters long; the limit is {MAX_NAME_CHARS}"
        )));
    }
    if name.trim() != name {
        return Err(Error::InvalidName(
            "name starts or ends with white space".into(),
        ));
    }
    if let Some(c) = name.chars().find(|&c| !printable(c)) {
        return Err(Error::InvalidName(format!(
            "name contains the invisible or control character {c:?}"
        )));
    }
    Ok(())
}

/// Whether `c` may appear in a name: not a control or format character
/// (zero-width spaces, direction overrides, ...), and no white space but the
/// plain space, so that a name shows as what it is.
fn printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    // Unicode general category Cf (format), the invisible characters.
    !matches!(c,
        '\u{00AD}' | '\u{0600}'..='\u{0605}' | '\u{061C}' | '\u{06DD}' | '\u{070F}'
        | '\u{0890}'..='\u{0891}' | '\u{08E2}' | '\u{180E}' | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}'
        | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{110BD}' | '\u{110CD}'
        | '\u{13430}'..='\u{1343F}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_length_counts_characters_not_bytes() {
        assert!(message(&"a".repeat(128)).is_ok());
        assert!(
            message(&"😀".repeat(128)).is_ok(),
            "128 emoji are 512 bytes but valid"
        );
        assert!(matches!(
            message(&"a".repeat(129)),
            Err(Error::InvalidMessage(_))
        ));
        assert!(matches!(message(""), Err(Error::InvalidMessage(_))));
        assert!(message(" ").is_ok(), "white space is a character");
    }

    #[test]
    fn names_are_printable_trimmed_and_bounded() {
        assert!(name("Alice").is_ok());
        assert!(name("Zoë 🦀").is_ok());
        for bad in [
            "",
            "   ",
            " Alice",
            "Alice ",
            "Al\nice",
            "A\u{7}",
            &"x".repeat(33),
        ] {
            assert!(matches!(name(bad), Err(Error::InvalidName(_))), "{bad:?}");
        }
    }
}

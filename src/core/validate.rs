//! Input rules shared by the server (which enforces them) and the client
//! (which checks early to give a quick answer; the server never trusts it).

use crate::core::error::{Error, Result};

/// Longest valid chat message, in characters (Unicode scalar values).
pub const MAX_MESSAGE_CHARS: usize = 128;
/// Longest valid participant name, in characters.
pub const MAX_NAME_CHARS: usize = 32;

/// How far ahead of a node's clock a request's Lamport clock may be. A
/// participant's clock is legitimately ahead after it saw events of a node
/// whose clock is ahead (it then moves here); nothing honest is ahead by
/// this much.
pub const MAX_LAMPORT_LEAD: u64 = 1 << 40;
/// The highest Lamport clock a request may carry, whatever the node's
/// clock: the clock then has room for 2^62 more ticks before the top.
pub const MAX_REQUEST_LAMPORT: u64 = 1 << 62;
/// The highest Lamport time a relayed event may carry. Nodes accept no
/// request clock above [`MAX_REQUEST_LAMPORT`], so an honest node would
/// need 2^62 events to stamp one above this: a peer that sends one is
/// broken or hostile, and the event is dropped.
pub const MAX_EVENT_LAMPORT: u64 = 1 << 63;

/// A request's Lamport clock, against the node's clock `now`: at most
/// [`MAX_LAMPORT_LEAD`] ahead and at most [`MAX_REQUEST_LAMPORT`].
pub fn request_lamport(lamport: u64, now: u64) -> Result<()> {
    if lamport > MAX_REQUEST_LAMPORT || lamport - now.min(lamport) > MAX_LAMPORT_LEAD {
        return Err(Error::InvalidRequest(format!(
            "lamport {lamport} is far ahead of this node's clock ({now}): a request's clock \
             may be at most 2^40 ahead of it and never above 2^62"
        )));
    }
    Ok(())
}

/// Longest session token or participant id accepted, in bytes. Nodes hand
/// out 32 (a token: a UUID's hex digits) and 36 (an id: a hyphenated UUID).
pub const MAX_TOKEN_BYTES: usize = 64;
/// Most marks a `seen` vector may hold: one per origin (node incarnation)
/// the participant saw events of.
pub const MAX_SEEN_MARKS: usize = 1024;
/// Most nodes `unanswered_at` may name.
pub const MAX_UNANSWERED_AT: usize = 64;
/// Most nodes `known_nodes` may name.
pub const MAX_KNOWN_NODES: usize = 64;

/// A session token or participant id (`field` names it): at most
/// [`MAX_TOKEN_BYTES`]. An unknown one of that size is for the caller to
/// refuse as unauthenticated.
pub fn token(field: &str, value: &str) -> Result<()> {
    if value.len() > MAX_TOKEN_BYTES {
        return Err(Error::InvalidRequest(format!(
            "{field} is {} bytes long; the limit is {MAX_TOKEN_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// A publish id: empty (the node picks one) or a UUID in its canonical
/// form, 36 characters of lower-case hex digits and hyphens (what the
/// clients send: `uuid::Uuid::new_v4().to_string()`).
pub fn publish_id(id: &str) -> Result<()> {
    if !id.is_empty() && canonical_uuid(id.as_bytes()).is_none() {
        return Err(Error::InvalidRequest(format!(
            "publish_id must be empty or a UUID in canonical form \
             (36 characters, lower-case hex and hyphens); got {} bytes",
            id.len()
        )));
    }
    Ok(())
}

/// Each byte's value as a lowercase hex digit, or `NOT_HEX`.
const HEX_DIGITS: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut i = 0;
    while i < 16 {
        table[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    table
};
const NOT_HEX: u8 = 0xff;

/// Where the 32 digits of a canonical UUID are, in its two halves.
const HIGH_DIGITS: [usize; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17];
const LOW_DIGITS: [usize; 16] = [
    19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35,
];

/// The 128 bits of `id`, as two halves, if it is a UUID in canonical form:
/// 36 characters, lowercase hex digits in groups of 8-4-4-4-12 joined by
/// hyphens.
pub fn canonical_uuid(id: &[u8]) -> Option<[u64; 2]> {
    let id: &[u8; 36] = id.try_into().ok()?;
    if [id[8], id[13], id[18], id[23]] != [b'-'; 4] {
        return None;
    }
    // Any byte that is no digit sets bits above the low four.
    let mut seen = 0u8;
    let mut half = |at: &[usize; 16]| {
        at.iter().fold(0u64, |bits, &i| {
            let digit = HEX_DIGITS[usize::from(id[i])];
            seen |= digit;
            bits << 4 | u64::from(digit & 0xf)
        })
    };
    let halves = [half(&HIGH_DIGITS), half(&LOW_DIGITS)];
    (seen <= 0xf).then_some(halves)
}

/// The repeated fields of a resume or rejoin: at most [`MAX_SEEN_MARKS`]
/// marks in `seen`, [`MAX_UNANSWERED_AT`] nodes in `unanswered_at` and
/// [`MAX_KNOWN_NODES`] in `known_nodes`.
pub fn seen_and_nodes(seen: usize, unanswered_at: usize, known_nodes: usize) -> Result<()> {
    if seen > MAX_SEEN_MARKS {
        return Err(Error::InvalidRequest(format!(
            "seen holds {seen} marks; the limit is {MAX_SEEN_MARKS}"
        )));
    }
    if unanswered_at > MAX_UNANSWERED_AT {
        return Err(Error::InvalidRequest(format!(
            "unanswered_at names {unanswered_at} nodes; the limit is {MAX_UNANSWERED_AT}"
        )));
    }
    if known_nodes > MAX_KNOWN_NODES {
        return Err(Error::InvalidRequest(format!(
            "known_nodes names {known_nodes} nodes; the limit is {MAX_KNOWN_NODES}"
        )));
    }
    Ok(())
}

/// Longest text of an event a node writes itself ("Participant X joined
/// Chitty-Chat at Lamport time L" with the longest name and clock).
const MAX_NOTICE_CHARS: usize = 128;

/// An event relayed by a peer, against what an honest node stamps: a known
/// kind, a Lamport time of at most [`MAX_EVENT_LAMPORT`], a valid name and
/// publish id, a bounded participant id and `deps`, and a text that follows
/// the message rules (for a message) or is one printable line (a node's
/// own notice). Peers are members, but a broken or hostile one must not get
/// through other nodes what no participant could publish. Returns why not.
pub fn relayed_event(event: &crate::proto::Event) -> std::result::Result<(), String> {
    use crate::proto::EventKind;
    if event.lamport > MAX_EVENT_LAMPORT {
        return Err(format!(
            "Lamport time {} is absurd (no honest node stamps above 2^63)",
            event.lamport
        ));
    }
    let kind = EventKind::try_from(event.kind)
        .ok()
        .filter(|k| *k != EventKind::Unspecified)
        .ok_or_else(|| format!("unknown event kind {}", event.kind))?;
    token("participant_id", &event.participant_id).map_err(|e| e.to_string())?;
    name(&event.participant_name).map_err(|e| e.to_string())?;
    publish_id(&event.publish_id).map_err(|e| e.to_string())?;
    if event.deps.len() > MAX_SEEN_MARKS {
        return Err(format!("{} causal dependencies", event.deps.len()));
    }
    match kind {
        EventKind::Message => message(&event.text).map_err(|e| e.to_string()),
        _ if event.text.chars().count() > MAX_NOTICE_CHARS
            || !event.text.chars().all(shows_as_itself) =>
        {
            Err("a notice that is not one printable line".into())
        }
        _ => Ok(()),
    }
}

/// A valid message is one line of 1 to [`MAX_MESSAGE_CHARS`] characters
/// (protobuf `string` fields are already guaranteed to be UTF-8 when they
/// reach us), with at least one [`visible`] character, with no control character (C0, which
/// includes tab and line feed, DEL, C1), no line or paragraph separator and
/// no invisible format character (zero-width spaces, direction overrides):
/// what a terminal would act on rather than show, so that a message cannot
/// move others' cursors, rewrite their lines or fake a line from someone
/// else.
pub fn message(text: &str) -> Result<()> {
    // Most messages are printable ASCII: then one pass over the bytes
    // answers, the same as the rules below.
    if text.len() <= MAX_MESSAGE_CHARS
        && let (true, true) = printable_ascii(text.as_bytes())
    {
        return Ok(());
    }
    message_by_characters(text)
}

/// Whether `text` is printable ASCII (space to tilde), and whether any of
/// it is not a space. One pass with no early exit, which the compiler
/// turns into a few vector instructions for a short text.
fn printable_ascii(text: &[u8]) -> (bool, bool) {
    let mut printable = true;
    let mut shows = false;
    for &b in text {
        printable &= (b' '..=b'~').contains(&b);
        shows |= b != b' ';
    }
    (printable, shows)
}

fn message_by_characters(text: &str) -> Result<()> {
    let chars = text.chars().count();
    if chars == 0 {
        return Err(Error::InvalidMessage("message is empty".into()));
    }
    if chars > MAX_MESSAGE_CHARS {
        return Err(Error::InvalidMessage(format!(
            "message is {chars} characters long; the limit is {MAX_MESSAGE_CHARS}"
        )));
    }
    if let Some(c) = text.chars().find(|&c| !shows_as_itself(c)) {
        return Err(Error::InvalidMessage(format!(
            "message contains the control or invisible character {c:?}; \
             a message is one line of printable text"
        )));
    }
    if !text.chars().any(visible) {
        return Err(Error::InvalidMessage(
            "message shows nothing: it has no visible character (white space or \
             invisible characters only); a message needs a letter, mark, number, \
             punctuation or symbol"
                .into(),
        ));
    }
    Ok(())
}

/// Whether `c` shows as something: of Unicode general category letter (L),
/// mark (M), number (N), punctuation (P) or symbol (S), and neither a
/// default-ignorable code point (Hangul fillers, variation selectors,
/// combining grapheme joiner: letters and marks that render as nothing)
/// nor U+2800 BRAILLE PATTERN BLANK (a symbol that renders as a space).
/// Not separators (Z: spaces), controls (Cc), format characters (Cf:
/// U+200B, U+200D, U+2060, U+FEFF, ...), private use (Co) or unassigned
/// (Cn) code points. The one rule of what a message, and a name, must hold
/// at least one of; the same for every client and node.
pub fn visible(c: char) -> bool {
    // Printable ASCII but the space: letters, digits, punctuation and
    // symbols, none of them default-ignorable. The same answer as below,
    // without a skeleton per character (a test checks all 128).
    if c.is_ascii() {
        return c.is_ascii_graphic();
    }
    visible_beyond_ascii(c)
}

fn visible_beyond_ascii(c: char) -> bool {
    use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};
    let shown = matches!(
        c.general_category_group(),
        GeneralCategoryGroup::Letter
            | GeneralCategoryGroup::Mark
            | GeneralCategoryGroup::Number
            | GeneralCategoryGroup::Punctuation
            | GeneralCategoryGroup::Symbol
    );
    // UTS 39's skeleton drops exactly the default-ignorable code points.
    shown
        && c != '\u{2800}'
        && unicode_security::skeleton(c.encode_utf8(&mut [0; 4]))
            .next()
            .is_some()
}

/// `text` as it may be printed on a terminal: every character that does
/// not show as itself (see [`message`]) written as a visible escape,
/// `\x1b` for ESC, `\u{202e}` for a direction override. For what is shown
/// of events, whose text and names come from other nodes (older versions
/// accepted anything).
pub fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write;
    if text.chars().all(shows_as_itself) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if shows_as_itself(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
    out.into()
}

/// Whether a terminal shows `c` as a character of the line: not a control
/// character, not a line or paragraph separator, not an invisible format
/// character.
fn shows_as_itself(c: char) -> bool {
    if c.is_ascii() {
        return !c.is_ascii_control();
    }
    shows_as_itself_beyond_ascii(c)
}

fn shows_as_itself_beyond_ascii(c: char) -> bool {
    !(c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || is_format(c))
}

/// A valid name is 1 to [`MAX_NAME_CHARS`] printable characters, at least
/// one of them [`visible`], with no leading or trailing white space.
pub fn name(name: &str) -> Result<()> {
    // Printable ASCII, not starting or ending with a space: valid, as the
    // rules below would find.
    if let (Some(b'!'..=b'~'), Some(b'!'..=b'~')) = (name.bytes().next(), name.bytes().last())
        && name.len() <= MAX_NAME_CHARS
        && let (true, _) = printable_ascii(name.as_bytes())
    {
        return Ok(());
    }
    name_by_characters(name)
}

fn name_by_characters(name: &str) -> Result<()> {
    let chars = name.chars().count();
    if name.trim().is_empty() {
        return Err(Error::InvalidName("name is empty".into()));
    }
    if !name.chars().any(visible) {
        return Err(Error::InvalidName(
            "name shows nothing: it has no visible character".into(),
        ));
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
    if c.is_ascii() {
        return c == ' ' || c.is_ascii_graphic();
    }
    printable_beyond_ascii(c)
}

fn printable_beyond_ascii(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    !is_format(c)
}

/// Unicode general category Cf (format), the invisible characters.
fn is_format(c: char) -> bool {
    matches!(c,
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
    fn the_ascii_shortcuts_answer_as_the_unicode_rules_do() {
        for c in (0u8..=0x7f).map(char::from) {
            assert_eq!(visible(c), visible_beyond_ascii(c), "visible {c:?}");
            assert_eq!(
                shows_as_itself(c),
                shows_as_itself_beyond_ascii(c),
                "shows as itself {c:?}"
            );
            assert_eq!(printable(c), printable_beyond_ascii(c), "printable {c:?}");
        }
    }

    #[test]
    fn every_one_byte_change_of_a_uuid_is_parsed_as_uuid_would() {
        // What is canonical by the uuid crate: it parses, and prints the same.
        let expected = |bytes: &[u8]| {
            let text = std::str::from_utf8(bytes).ok()?;
            let parsed = uuid::Uuid::try_parse(text).ok()?;
            let (high, low) = parsed.as_u64_pair();
            (parsed.hyphenated().to_string() == text).then_some([high, low])
        };
        let id = *b"0b8f5b3e-2c1d-4a7e-9f00-1234567890ab";
        let mut canonical = 0;
        for at in 0..id.len() {
            for byte in 0..=u8::MAX {
                let mut changed = id;
                changed[at] = byte;
                let parsed = canonical_uuid(&changed);
                assert_eq!(parsed, expected(&changed), "{:?}", changed.escape_ascii());
                canonical += usize::from(parsed.is_some());
            }
        }
        // Each of the 32 digits as any of 16, and each of the 4 hyphens
        // left as it was.
        assert_eq!(canonical, 32 * 16 + 4);
    }

    /// Every string of up to `len` characters from `alphabet`.
    fn strings(alphabet: &[char], len: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..len {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn the_ascii_shortcuts_of_messages_and_names_answer_as_the_rules_do() {
        let ascii: Vec<char> = (0u8..=0x7f).map(char::from).collect();
        let mut cases = strings(&ascii, 2);
        cases.extend(strings(&[' ', 'a', '\t', '~', '\u{7f}', 'é'], 4));
        for len in [31, 32, 33, 127, 128, 129] {
            for edge in ["a", " ", "\u{1}"] {
                cases.push(format!("{}{edge}", "b".repeat(len - 1)));
                cases.push(format!("{edge}{}", "b".repeat(len - 1)));
            }
            cases.push(" ".repeat(len));
        }
        for case in &cases {
            let answer = |r: Result<()>| r.map_err(|e| e.to_string());
            assert_eq!(
                answer(message(case)),
                answer(message_by_characters(case)),
                "message {case:?}"
            );
            assert_eq!(
                answer(name(case)),
                answer(name_by_characters(case)),
                "name {case:?}"
            );
        }
    }

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
        assert!(message("a b").is_ok());
    }

    #[test]
    fn messages_are_one_printable_line() {
        for bad in [
            " ",
            "   ",
            "\u{3000}",
            "two\nlines",
            "back\rwards",
            "tab\t",
            "\u{1b}[2J\u{1b}[Hcleared",
            "bs\u{8}\u{8}",
            "bell\u{7}",
            "del\u{7f}",
            "nel\u{85}",
            "csi\u{9b}2J",
            "\u{202e}desrever",
            "zero\u{200b}width",
            "line\u{2028}separator",
        ] {
            assert!(
                matches!(message(bad), Err(Error::InvalidMessage(_))),
                "{bad:?}"
            );
        }
        // ZERO WIDTH JOINER is a format character, as in names: refused,
        // emoji sequences joined by it too.
        assert!(message("👩\u{200d}👩").is_err());
        for good in ["hello", " padded ", "Zoë 🦀", "日本語", "a\u{301}", "\\x1b"] {
            assert!(message(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn a_message_must_show_at_least_one_visible_character() {
        let shows_nothing = |text: &str| matches!(message(text), Err(Error::InvalidMessage(m)) if m.contains("no visible character"));
        // Spaces only (separators, category Z).
        for text in [" ", "     ", "\u{3000}\u{2003}", "\u{a0}"] {
            assert!(shows_nothing(text), "{text:?}");
        }
        // Invisible letters and symbols: Hangul fillers, braille blank, a
        // variation selector, a combining grapheme joiner; mixed.
        for text in [
            "\u{3164}",
            "\u{115f}\u{1160}",
            "\u{ffa0}",
            "\u{2800}\u{2800}",
            "\u{fe0f}",
            "\u{34f}",
            " \u{3164} \u{2800} ",
        ] {
            assert!(shows_nothing(text), "{text:?}");
        }
        // Format characters (Cf) are refused wherever they are: U+200B,
        // U+200D, U+2060, U+FEFF alone or mixed with spaces.
        for text in [
            "\u{200b}",
            "\u{200d}",
            "\u{2060}",
            "\u{feff}",
            " \u{200b} \u{2060} ",
        ] {
            assert!(
                matches!(message(text), Err(Error::InvalidMessage(_))),
                "{text:?}"
            );
        }
        // One visible character is enough, whichever category.
        for text in [
            "a",
            " . ",
            "7",
            "\u{301}",
            "\u{3164}x",
            "€",
            "🦀",
            "日",
            "\u{2801}",
        ] {
            assert!(message(text).is_ok(), "{text:?}");
        }
        assert!(visible('a') && visible('-') && visible('🦀') && visible('\u{301}'));
        for c in [' ', '\u{200b}', '\u{3164}', '\u{2800}', '\u{e000}', '\u{7}'] {
            assert!(!visible(c), "{c:?}");
        }
    }

    #[test]
    fn escaped_text_cannot_move_the_cursor_or_fake_a_line() {
        assert_eq!(escaped("plain Zoë 🦀"), "plain Zoë 🦀");
        assert!(matches!(escaped("plain"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(escaped("\u{1b}[2Jgone"), "\\x1b[2Jgone");
        assert_eq!(escaped("ok\r\nBob: fake"), "ok\\x0d\\x0aBob: fake");
        assert_eq!(escaped("\u{202e}abc"), "\\u{202e}abc");
        assert_eq!(escaped("a\u{9b}b\u{7f}"), "a\\x9bb\\x7f");
        assert_eq!(escaped("x\u{2028}y"), "x\\u{2028}y");
        for c in (0..0x110000u32).filter_map(char::from_u32) {
            let shown = escaped(&c.to_string()).into_owned();
            assert!(
                shown.chars().all(|s| !s.is_control() && s != '\u{1b}'),
                "{c:?} -> {shown:?}"
            );
        }
    }

    #[test]
    fn request_clocks_may_lead_but_not_absurdly() {
        assert!(request_lamport(0, 0).is_ok());
        assert!(request_lamport(5, 1_000).is_ok(), "behind is fine");
        assert!(request_lamport(MAX_LAMPORT_LEAD, 0).is_ok());
        assert!(request_lamport(MAX_LAMPORT_LEAD + 1, 0).is_err());
        assert!(request_lamport(MAX_LAMPORT_LEAD + 10, 10).is_ok());
        assert!(request_lamport(MAX_REQUEST_LAMPORT, MAX_REQUEST_LAMPORT - 1).is_ok());
        assert!(request_lamport(MAX_REQUEST_LAMPORT + 1, MAX_REQUEST_LAMPORT).is_err());
        assert!(request_lamport(u64::MAX, u64::MAX).is_err());
    }

    #[test]
    fn publish_ids_are_empty_or_canonical_uuids() {
        assert!(publish_id("").is_ok());
        assert!(publish_id(&uuid::Uuid::new_v4().to_string()).is_ok());
        assert!(publish_id("67e55044-10b1-426f-9247-bb680e5fe0c8").is_ok());
        for bad in [
            "67E55044-10B1-426F-9247-BB680E5FE0C8".to_string(),
            "67e5504410b1426f9247bb680e5fe0c8".into(),
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8".into(),
            "67e55044-10b1-426f-9247-bb680e5fe0c".into(),
            "67e55044+10b1-426f-9247-bb680e5fe0c8".into(),
            "x".repeat(1 << 20),
        ] {
            assert!(
                matches!(publish_id(&bad), Err(Error::InvalidRequest(m)) if m.contains("publish_id")),
                "{bad:.40}"
            );
        }
    }

    #[test]
    fn tokens_and_repeated_fields_are_bounded() {
        assert!(token("session_token", &"t".repeat(64)).is_ok());
        assert!(token("session_token", "").is_ok());
        assert!(token("session_token", &"t".repeat(65)).is_err());
        assert!(seen_and_nodes(MAX_SEEN_MARKS, MAX_UNANSWERED_AT, MAX_KNOWN_NODES).is_ok());
        assert!(seen_and_nodes(MAX_SEEN_MARKS + 1, 0, 0).is_err());
        assert!(seen_and_nodes(0, MAX_UNANSWERED_AT + 1, 0).is_err());
        assert!(seen_and_nodes(0, 0, MAX_KNOWN_NODES + 1).is_err());
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
            "\u{3164}",
            "\u{2800}",
            "Al\nice",
            "A\u{7}",
            &"x".repeat(33),
        ] {
            assert!(matches!(name(bad), Err(Error::InvalidName(_))), "{bad:?}");
        }
    }
}

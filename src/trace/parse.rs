//! Reading JSON logs: the diagram records of docs/logs.md, one file at a
//! time, with a warning (or an error) naming the file and line of whatever
//! cannot be read.

use serde_json::{Map, Value};

use crate::diagram::TARGET;

/// Whether a record was logged on the sending or on the receiving side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Sent,
    Received,
}

/// What a record is (its `message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Start,
    Rpc,
    Event,
    Stamp,
}

/// Who logged a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Node,
    Participant,
}

/// One diagram record, with where it was read.
#[derive(Debug, Clone)]
pub struct Record {
    /// The index of its file among those read.
    pub file: usize,
    /// Its line in that file, from 1.
    pub line: usize,
    pub kind: Kind,
    pub role: Role,
    /// Wall-clock time in nanoseconds since 1970, for the time window only.
    pub time: Option<i128>,
    pub node: Option<String>,
    pub node_addr: Option<String>,
    pub participant: Option<String>,
    pub participant_id: Option<String>,
    pub call: Option<String>,
    pub dir: Option<Dir>,
    pub peer: Option<String>,
    pub peer_addr: Option<String>,
    pub event: Option<String>,
    pub event_kind: Option<String>,
    pub event_lamport: Option<u64>,
    pub lamport_carried: Option<u64>,
    pub lamport_after: Option<u64>,
    pub boot: Option<String>,
}

/// The records of one file.
#[derive(Debug, Clone)]
pub struct LogFile {
    pub name: String,
    pub records: Vec<Record>,
}

/// Reads the diagram records of `text`, the contents of the file `name`
/// (the `file`th given). Lines that are not diagram records are skipped;
/// a damaged line is skipped with a warning; a file with no records at
/// all (empty, a text log, only other lines) is an error.
/// At most this many damaged lines of one file are warned about one by one;
/// the rest are counted in one more warning.
const MAX_LINE_WARNINGS: usize = 20;

pub fn parse_log(
    file: usize,
    name: &str,
    text: &str,
    warnings: &mut Vec<String>,
) -> Result<LogFile, String> {
    let lines: Vec<&str> = text.lines().collect();
    let last_line = lines
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map(|i| i + 1);
    let Some(last_line) = last_line else {
        return Err(format!(
            "{name}: the file is empty: no log lines to draw (was the process run with --log-format json?)"
        ));
    };
    let mut records = Vec::new();
    let mut json_lines = 0usize;
    let mut first_text: Option<usize> = None;
    let mut text_lines = 0usize;
    // Damaged lines warned about one by one, up to MAX_LINE_WARNINGS.
    let mut damaged = 0usize;
    let mut warn = |warning: String| {
        damaged += 1;
        if damaged <= MAX_LINE_WARNINGS {
            warnings.push(warning);
        }
    };
    for (i, raw) in lines.iter().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(object)) => {
                json_lines += 1;
                if object.get("target").and_then(Value::as_str) != Some(TARGET) {
                    continue;
                }
                match record(file, line, &object) {
                    Ok(Some(r)) => records.push(r),
                    Ok(None) => {}
                    Err(e) => warn(format!("{name}:{line}: {e}; line ignored")),
                }
            }
            Ok(_) => {
                text_lines += 1;
                first_text.get_or_insert(line);
            }
            Err(e) if trimmed.starts_with('{') && e.is_eof() => {
                let where_ = if line == last_line {
                    "the last line is cut off (the log was truncated, or the process was still writing it)"
                } else {
                    "a cut-off JSON line"
                };
                warn(format!("{name}:{line}: {where_}; line ignored"));
            }
            Err(e) if trimmed.starts_with('{') => {
                warn(format!("{name}:{line}: malformed JSON ({e}); line ignored"));
            }
            Err(_) => {
                text_lines += 1;
                first_text.get_or_insert(line);
            }
        }
    }
    if damaged > MAX_LINE_WARNINGS {
        warnings.push(format!(
            "{name}: {} more damaged lines ignored ({damaged} in all)",
            damaged - MAX_LINE_WARNINGS
        ));
    }
    if json_lines == 0 {
        let line = first_text.unwrap_or(1);
        return Err(format!(
            "{name}:{line}: not a JSON log: this line is not JSON (a text log? run the server or client with --log-format json)"
        ));
    }
    if let Some(line) = first_text {
        let more = match text_lines - 1 {
            0 => String::new(),
            n => format!(" (and {n} more such lines)"),
        };
        warnings.push(format!("{name}:{line}: not a JSON line; ignored{more}"));
    }
    if records.is_empty() {
        return Err(format!(
            "{name}: no diagram records (lines with target \"{TARGET}\"): its level may have turned them off (RUST_LOG)"
        ));
    }
    Ok(LogFile {
        name: name.to_string(),
        records,
    })
}

/// One record from its JSON object; `None` for a record this reader does
/// not know (records are only ever added: they are skipped).
fn record(file: usize, line: usize, o: &Map<String, Value>) -> Result<Option<Record>, String> {
    let kind = match o.get("message").and_then(Value::as_str) {
        Some("start") => Kind::Start,
        Some("rpc") => Kind::Rpc,
        Some("event") => Kind::Event,
        Some("stamp") => Kind::Stamp,
        Some(_) => return Ok(None),
        None => return Err("a diagram record without a message".into()),
    };
    let role = match o.get("role").and_then(Value::as_str) {
        Some("node") => Role::Node,
        Some("participant") => Role::Participant,
        Some(other) => return Err(format!("unknown role {}", quoted(other))),
        None => return Err("a diagram record without a role".into()),
    };
    let text = |key: &str| -> Result<Option<String>, String> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{key} is not a string")),
        }
    };
    let number = |key: &str| -> Result<Option<u64>, String> {
        match o.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{key} is not a whole number")),
        }
    };
    let dir = match text("dir")?.as_deref() {
        None => None,
        Some("sent") => Some(Dir::Sent),
        Some("received") => Some(Dir::Received),
        Some(other) => return Err(format!("unknown dir {}", quoted(other))),
    };
    let call = text("call")?;
    if matches!(kind, Kind::Rpc | Kind::Event) && (call.is_none() || dir.is_none()) {
        return Err("an rpc or event record without call or dir".into());
    }
    let node = text("node")?;
    if role == Role::Node && node.is_none() {
        return Err("a node's record without node".into());
    }
    if role == Role::Participant && o.get("participant").is_none() {
        return Err("a participant's record without participant".into());
    }
    Ok(Some(Record {
        file,
        line,
        kind,
        role,
        time: text("timestamp")?.as_deref().and_then(parse_time),
        node,
        node_addr: text("node_addr")?,
        participant: text("participant")?,
        participant_id: text("participant_id")?,
        call,
        dir,
        peer: text("peer")?,
        peer_addr: text("peer_addr")?,
        event: text("event")?,
        event_kind: text("kind")?,
        event_lamport: number("event_lamport")?,
        lamport_carried: number("lamport_carried")?,
        lamport_after: number("lamport_after")?,
        boot: text("boot")?,
    }))
}

/// `s` in quotes, with what a terminal would not show escaped, cut short.
pub fn quoted(s: &str) -> String {
    let short: String = s.chars().take(60).collect();
    format!("{:?}", short)
}

/// An RFC 3339 time (`2026-12-03T10:56:52.003709Z`, or with an offset
/// `+01:00`) in nanoseconds since 1970-01-01 UTC.
pub fn parse_time(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let digits = |from: usize, len: usize| -> Option<i128> {
        let part = b.get(from..from + len)?;
        part.iter().try_fold(0i128, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i128::from(c - b'0'))
        })
    };
    let year = digits(0, 4)?;
    let month = digits(5, 2)?;
    let day = digits(8, 2)?;
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    if b.get(4) != Some(&b'-')
        || b.get(7) != Some(&b'-')
        || !matches!(b.get(10), Some(b'T' | b't' | b' '))
        || b.get(13) != Some(&b':')
        || b.get(16) != Some(&b':')
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: i128 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 9)];
        nanos = frac.parse::<i128>().ok()? * 10i128.pow(9 - frac.len() as u32);
    }
    let offset = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let minutes = digits(i + 1, 2)? * 60 + digits(i + 4, 2)?;
            if *sign == b'+' { minutes } else { -minutes }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset * 60;
    Some(seconds * 1_000_000_000 + nanos)
}

/// Days from 1970-01-01 to the given date (proleptic Gregorian).
fn days_from_civil(y: i128, m: i128, d: i128) -> i128 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_with_fractions_and_offsets() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(
            parse_time("1970-01-01T01:00:00+01:00"),
            Some(0),
            "an offset is taken off"
        );
        assert_eq!(
            parse_time("2026-12-03T10:56:52.003709Z"),
            Some(1_796_295_412_003_709_000)
        );
        for bad in [
            "",
            "2026-12-03",
            "2026-13-03T10:56:52Z",
            "2026-12-03T10:56:52",
            "x026-12-03T10:56:52Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn damaged_lines_are_warned_about_by_file_and_line() {
        let good = r#"{"timestamp":"2026-12-03T10:56:52.003709Z","level":"INFO","message":"start","role":"node","node":"a","generation":1,"node_addr":"127.0.0.1:1","target":"chitty::diagram"}"#;
        let text = format!("{good}\nplain words\n{{\"a\":1,}}\n{}", &good[..40]);
        let mut warnings = Vec::new();
        let log = parse_log(0, "n.jsonl", &text, &mut warnings).unwrap();
        assert_eq!(log.records.len(), 1);
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("n.jsonl:2: not a JSON line")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("n.jsonl:3: malformed JSON")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("n.jsonl:4: the last line is cut off")),
            "{warnings:?}"
        );
    }

    #[test]
    fn warnings_about_damaged_lines_are_capped_per_file() {
        let good = r#"{"timestamp":"2026-12-03T10:56:52.003709Z","level":"INFO","message":"start","role":"node","node":"a","generation":1,"node_addr":"127.0.0.1:1","target":"chitty::diagram"}"#;
        let text = format!("{good}\n{}", "{\"a\":1,}\n".repeat(1000));
        let mut warnings = Vec::new();
        parse_log(0, "n.jsonl", &text, &mut warnings).unwrap();
        assert_eq!(warnings.len(), MAX_LINE_WARNINGS + 1, "{warnings:?}");
        assert_eq!(
            warnings.last().unwrap(),
            "n.jsonl: 980 more damaged lines ignored (1000 in all)"
        );
    }

    #[test]
    fn a_file_without_records_is_an_error() {
        let mut w = Vec::new();
        let empty = parse_log(0, "e.jsonl", "\n\n", &mut w).unwrap_err();
        assert!(empty.starts_with("e.jsonl: the file is empty"), "{empty}");
        let text = parse_log(
            0,
            "t.log",
            "2026-12-03T10:56:52Z  INFO chitty: serving\n",
            &mut w,
        )
        .unwrap_err();
        assert!(text.starts_with("t.log:1: not a JSON log"), "{text}");
        let other = parse_log(0, "o.jsonl", "{\"target\":\"chitty::node\"}\n", &mut w).unwrap_err();
        assert!(other.starts_with("o.jsonl: no diagram records"), "{other}");
    }
}

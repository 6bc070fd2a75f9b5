//! The interactive side of `chitty client`: what a typed line asks for
//! (a message or a `/command`), the line editor that reads it, and the screen
//! that events and the client's own notices are written to.
//!
//! In a terminal, everything is printed through the line editor
//! (rustyline's external printer), above the prompt, so that what the user
//! is typing stays readable; a line the user sends as a message is erased
//! once entered, because the cluster's echo of it shows it (with its
//! timestamps) a moment later. Piped, events go to standard output and
//! notices to standard error, as plain lines.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

/// What one line of input asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish this text.
    Publish(String),
    /// `/who`: list the room.
    Who,
    /// `/help`: list the commands.
    Help,
    /// `/quit` (or `/exit`), end of input, Ctrl-C or Ctrl-D: leave.
    Quit,
    /// A `/command` the client does not know (the word after the slash).
    Unknown(String),
    /// An empty line: nothing to do.
    Nothing,
}

/// The commands, as `/help` prints them.
pub const HELP: &str = "commands:\n  \
    /who      who is in the room\n  \
    /help     this list\n  \
    /quit     leave (also /exit, Ctrl-D, Ctrl-C)\n  \
    //text    send a message that starts with a slash (\"/text\")\n\
    Any other line is sent as a message. Up and Down go through the lines typed before.";

/// Reads one line of input. A line whose first non-blank character is `/`
/// is a command and is never published: an unknown one is an error. To
/// publish a line that starts with a slash, double it: `//shrug` publishes
/// `/shrug`. Blank lines are ignored.
pub fn parse_line(line: &str) -> Action {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return Action::Nothing;
    }
    if let Some(rest) = line.trim_start().strip_prefix("//") {
        return Action::Publish(format!("/{rest}"));
    }
    let Some(command) = trimmed.strip_prefix('/') else {
        return Action::Publish(line.to_string());
    };
    let word = command.split_whitespace().next().unwrap_or("");
    match word {
        "quit" | "exit" => Action::Quit,
        "who" => Action::Who,
        "help" | "?" => Action::Help,
        other => Action::Unknown(other.to_string()),
    }
}

/// The answer to `/unknown`.
pub fn unknown_command(word: &str) -> String {
    format!(
        "error: unknown command /{}: nothing was sent (/help lists the commands; \
         start a message with // to send a line that begins with /)",
        crate::core::validate::escaped(word)
    )
}

/// Where the client writes: events, and its own notices (joined, moved,
/// errors, connection state). Cheap to clone; lines from several tasks never
/// interleave.
#[derive(Clone)]
pub struct Screen {
    out: Arc<Mutex<Output>>,
}

enum Output {
    /// Events to stdout, notices to stderr.
    Plain,
    /// Both above the line editor's prompt.
    Prompt(Box<dyn rustyline::ExternalPrinter + Send>),
}

impl Screen {
    /// Plain lines: events on stdout, notices on stderr.
    pub fn plain() -> Self {
        Self {
            out: Arc::new(Mutex::new(Output::Plain)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Output> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether lines go above a prompt (the client runs in a terminal).
    pub fn is_prompt(&self) -> bool {
        matches!(*self.lock(), Output::Prompt(_))
    }

    /// Prints an event line (or any line of the chat itself). A write that
    /// fails (the terminal was closed) is dropped: the client is leaving.
    pub fn line(&self, text: &str) {
        let mut out = self.lock();
        match &mut *out {
            Output::Plain => {
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{text}");
                let _ = stdout.flush();
            }
            Output::Prompt(printer) => {
                if printer.print(format!("{text}\n")).is_err() {
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "{text}");
                    let _ = stdout.flush();
                }
            }
        }
    }

    /// Prints one of the client's own notices: above the prompt in a
    /// terminal, else on stderr (so that stdout holds only the chat).
    pub fn notice(&self, text: &str) {
        let plain = matches!(*self.lock(), Output::Plain);
        if plain {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "{text}");
            let _ = stderr.flush();
        } else {
            self.line(text);
        }
    }

    /// Erases the `rows` terminal rows above the cursor: the line the user
    /// just entered, which the editor leaves on the screen.
    fn erase_rows_above(&self, rows: usize) {
        let _out = self.lock();
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, "\r\x1b[{rows}A\x1b[J");
        let _ = stdout.flush();
    }
}

/// How an event line shows time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// `[lamport L | local C] Name: text`: the event's and the client's
    /// Lamport times (the default when stdout is not a terminal).
    Lamport,
    /// `HH:MM:SS [lamport L | local C] Name: text`: the local wall-clock
    /// time of receipt first (the default in a terminal).
    Both,
    /// `HH:MM:SS Name: text`: wall-clock time only.
    Wall,
}

/// How events are printed: the layout, and whether names are coloured.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub layout: Layout,
    pub color: bool,
    /// One JSON object per line instead (see [`Style::json_line`]).
    pub json: bool,
}

impl Style {
    /// The style for this process: `layout` if given, else by whether
    /// stdout is a terminal; colour only on a terminal, unless `NO_COLOR`
    /// is set (to anything but the empty string) or `TERM` is `dumb`.
    pub fn detect(layout: Option<Layout>, terminal: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
            || std::env::var("TERM").is_ok_and(|t| t == "dumb");
        Self {
            layout: layout.unwrap_or(if terminal {
                Layout::Both
            } else {
                Layout::Lamport
            }),
            color: terminal && !no_color,
            json: false,
        }
    }

    /// The style of `--json`: one object per line, no colour.
    pub fn json() -> Self {
        Self {
            layout: Layout::Lamport,
            color: false,
            json: true,
        }
    }

    /// What one received item is as a JSON object (`--json`). An event:
    /// `{"kind":"message"|"joined"|"left","lamport":L,"local":C,"name":..,
    /// "participant_id":..,"text":..,"origin":..,"generation":..,"seq":..,
    /// "received_ms":..}` (with `"earlier":true` for a message from before
    /// the join); the others `{"kind":"gap","reason":..}`,
    /// `{"kind":"late","late":bool}`, `{"kind":"room"|"still_here",
    /// "names":[..]}`. Texts are as received (JSON escapes any control
    /// character).
    pub fn json_line(item: &crate::client::Received, earlier: bool) -> String {
        use crate::client::Received;
        use serde_json::json;
        let value = match item {
            Received::Event { event, local } => {
                let kind = match event.kind() {
                    crate::proto::EventKind::Message => "message",
                    crate::proto::EventKind::Joined => "joined",
                    crate::proto::EventKind::Left => "left",
                    _ => "other",
                };
                let origin = event.id.as_ref().and_then(|id| id.origin.as_ref());
                let mut value = json!({
                    "kind": kind,
                    "lamport": event.lamport,
                    "local": local,
                    "name": event.participant_name,
                    "participant_id": event.participant_id,
                    "text": event.text,
                    "origin": origin.map(|o| o.id.as_str()),
                    "generation": origin.map(|o| o.generation),
                    "seq": event.id.as_ref().map(|id| id.seq),
                    "received_ms": std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64),
                });
                if earlier {
                    value["earlier"] = json!(true);
                }
                value
            }
            Received::Gap(gap) => json!({"kind": "gap", "reason": gap.reason}),
            Received::Late(late) => json!({"kind": "late", "late": late}),
            Received::Room(list) => json!({
                "kind": "room",
                "names": list.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            }),
            Received::StillHere(names) => json!({"kind": "still_here", "names": names}),
            Received::Servers(list) => json!({
                "kind": "servers",
                "servers": list.servers.iter().map(|s| s.addr.as_str()).collect::<Vec<_>>(),
                "unreachable": list.unreachable.iter().map(|s| s.addr.as_str()).collect::<Vec<_>>(),
            }),
        };
        value.to_string()
    }

    /// The `here` summary on joining as a JSON object (`--json`):
    /// `{"kind":"here","names":[..]}`, the others already there.
    pub fn json_here(others: &[crate::proto::Participant]) -> String {
        serde_json::json!({
            "kind": "here",
            "names": others.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// One received item as a line.
    pub fn render(&self, item: &crate::client::Received) -> String {
        use crate::core::validate::escaped;
        if self.json {
            return Self::json_line(item, false);
        }
        let crate::client::Received::Event { event, local } = item else {
            return item.to_string();
        };
        let mut line = String::new();
        if self.layout != Layout::Lamport {
            line.push_str(&wall_clock());
            line.push(' ');
        }
        if self.layout != Layout::Wall {
            line.push_str(&format!("[lamport {} | local {local}] ", event.lamport));
        }
        let name = escaped(&event.participant_name);
        if event.kind() == crate::proto::EventKind::Message {
            if self.color {
                line.push_str(&format!(
                    "\x1b[{}m{name}\x1b[0m: ",
                    name_color(&event.participant_name)
                ));
            } else {
                line.push_str(&format!("{name}: "));
            }
            line.push_str(&escaped(&event.text));
        } else if self.color {
            // Joins and leaves, dimmed.
            line.push_str(&format!("\x1b[2m{}\x1b[0m", escaped(&event.text)));
        } else {
            line.push_str(&escaped(&event.text));
        }
        line
    }
}

/// The ANSI colour (SGR code) of a name: the same name, the same colour,
/// in every client.
pub fn name_color(name: &str) -> u8 {
    const COLORS: [u8; 10] = [31, 32, 33, 34, 35, 36, 91, 92, 93, 95];
    // FNV-1a: stable across runs and platforms.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    COLORS[hash as usize % COLORS.len()]
}

/// The local wall-clock time now, `HH:MM:SS`.
fn wall_clock() -> String {
    // SAFETY: time and localtime_r write only into the values passed.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return "--:--:--".to_string();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

/// The prompt of the line editor.
pub const PROMPT: &str = "> ";

/// Reads standard input on a dedicated OS thread (reading a terminal or a
/// pipe blocks and cannot be cancelled, so the thread is left to end with
/// the process), sending what each line asks for. In a terminal the line
/// editor keeps a history (Up arrow); a message the node would refuse (too
/// long, a control character) is reported and offered again for editing,
/// not sent. Returns the screen to print to.
pub fn spawn_input_reader(interactive: bool, tx: mpsc::Sender<Action>) -> Screen {
    if interactive
        && let Ok(mut editor) = rustyline::DefaultEditor::new()
        && let Ok(printer) = editor.create_external_printer()
    {
        let screen = Screen {
            out: Arc::new(Mutex::new(Output::Prompt(Box::new(printer)))),
        };
        let reader_screen = screen.clone();
        std::thread::spawn(move || {
            let screen = reader_screen;
            let mut initial = String::new();
            loop {
                let read = editor.readline_with_initial(PROMPT, (initial.as_str(), ""));
                initial.clear();
                let line = match read {
                    Ok(line) => line,
                    Err(_) => {
                        // Ctrl-C, Ctrl-D or a terminal error (it was closed).
                        let _ = tx.blocking_send(Action::Quit);
                        return;
                    }
                };
                let action = parse_line(&line);
                if action != Action::Nothing {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if let Action::Publish(text) = &action {
                    // Shown once: the echo from the cluster replaces it.
                    screen.erase_rows_above(typed_rows(&line));
                    if let Err(e) = crate::core::validate::message(text) {
                        screen.notice(&format!(
                            "error: message not sent: {e}; it is back on the prompt for editing"
                        ));
                        initial = line;
                        continue;
                    }
                }
                let quit = action == Action::Quit;
                if tx.blocking_send(action).is_err() || quit {
                    return;
                }
            }
        });
        return screen;
    }
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(parse_line(&line)).is_err() {
                return;
            }
        }
        let _ = tx.blocking_send(Action::Quit);
    });
    Screen::plain()
}

/// The terminal rows that the prompt and `line` took once entered.
fn typed_rows(line: &str) -> usize {
    let columns = terminal_columns().max(1);
    let width = PROMPT.len() + line.chars().map(char_width).sum::<usize>();
    width.div_ceil(columns).max(1)
}

/// Columns of a character on a terminal: 2 for the wide East Asian ranges,
/// 0 for combining marks, else 1 (close enough to size the rows to erase).
fn char_width(c: char) -> usize {
    match c as u32 {
        0x0300..=0x036f | 0x200b..=0x200f => 0,
        0x1100..=0x115f
        | 0x2e80..=0xa4cf
        | 0xac00..=0xd7a3
        | 0xf900..=0xfaff
        | 0xfe30..=0xfe4f
        | 0xff00..=0xff60
        | 0xffe0..=0xffe6
        | 0x1f300..=0x1faff
        | 0x20000..=0x3fffd => 2,
        _ => 1,
    }
}

/// The width of the terminal on stdout, 80 when it cannot be read.
fn terminal_columns() -> usize {
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct passed.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) == 0 && size.ws_col > 0 {
            usize::from(size.ws_col)
        } else {
            80
        }
    }
}

/// The names of `participants`, escaped, sorted without regard to case.
fn sorted_names(participants: &[crate::proto::Participant]) -> Vec<String> {
    let mut names: Vec<String> = participants
        .iter()
        .map(|p| crate::core::validate::escaped(&p.name).into_owned())
        .collect();
    names.sort_by_key(|n| n.to_lowercase());
    names
}

/// The line `/who` prints for the participants a node lists.
pub fn who_line(participants: &[crate::proto::Participant]) -> String {
    let names = sorted_names(participants);
    match names.len() {
        0 => "[who] nobody is here".to_string(),
        1 => format!("[who] 1 here: {}", names[0]),
        n => format!("[who] {n} here: {}", names.join(", ")),
    }
}

/// The line printed on joining: who else was already there.
pub fn here_line(others: &[crate::proto::Participant]) -> String {
    let names = sorted_names(others);
    match names.len() {
        0 => "[here] nobody else yet".to_string(),
        1 => format!("[here] 1 other: {}", names[0]),
        n => format!("[here] {n} others: {}", names.join(", ")),
    }
}

/// How an earlier message (from before the join) is marked.
pub const EARLIER: &str = "[earlier]";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_a_message_a_command_or_nothing() {
        assert_eq!(parse_line("hello"), Action::Publish("hello".into()));
        assert_eq!(
            parse_line("  hi there "),
            Action::Publish("  hi there ".into())
        );
        assert_eq!(parse_line("/who"), Action::Who);
        assert_eq!(parse_line(" /who  "), Action::Who);
        assert_eq!(parse_line("/help"), Action::Help);
        assert_eq!(parse_line("/quit"), Action::Quit);
        assert_eq!(parse_line("/exit"), Action::Quit);
        assert_eq!(parse_line("/nick Bob"), Action::Unknown("nick".into()));
        assert_eq!(parse_line("/"), Action::Unknown(String::new()));
        assert_eq!(parse_line("//shrug"), Action::Publish("/shrug".into()));
        assert_eq!(parse_line("//"), Action::Publish("/".into()));
        assert_eq!(parse_line("a /who"), Action::Publish("a /who".into()));
        assert_eq!(parse_line(""), Action::Nothing);
        assert_eq!(parse_line("   "), Action::Nothing);
    }

    #[test]
    fn an_event_line_follows_the_layout_and_colours_only_when_asked() {
        use crate::client::Received;
        let event = crate::proto::Event {
            kind: crate::proto::EventKind::Message as i32,
            lamport: 7,
            participant_name: "Bob".into(),
            text: "hi".into(),
            ..Default::default()
        };
        let item = Received::Event { event, local: 9 };
        let plain = |layout| Style {
            layout,
            color: false,
            json: false,
        };
        assert_eq!(
            plain(Layout::Lamport).render(&item),
            "[lamport 7 | local 9] Bob: hi"
        );
        assert_eq!(plain(Layout::Lamport).render(&item), item.to_string());
        let both = plain(Layout::Both).render(&item);
        assert_eq!(
            both.len(),
            9 + "[lamport 7 | local 9] Bob: hi".len(),
            "{both}"
        );
        assert!(
            both[..8].chars().all(|c| c.is_ascii_digit() || c == ':'),
            "{both}"
        );
        let wall = plain(Layout::Wall).render(&item);
        assert!(
            wall.ends_with(" Bob: hi") && !wall.contains("lamport"),
            "{wall}"
        );
        let coloured = Style {
            layout: Layout::Lamport,
            color: true,
            json: false,
        }
        .render(&item);
        let code = name_color("Bob");
        assert_eq!(
            coloured,
            format!("[lamport 7 | local 9] \x1b[{code}mBob\x1b[0m: hi")
        );
        assert_eq!(name_color("Bob"), code, "stable");
    }

    #[test]
    fn who_lists_the_names_sorted() {
        let p = |name: &str| crate::proto::Participant {
            name: name.into(),
            ..Default::default()
        };
        assert_eq!(who_line(&[]), "[who] nobody is here");
        assert_eq!(who_line(&[p("bob")]), "[who] 1 here: bob");
        assert_eq!(
            who_line(&[p("carol"), p("Alice"), p("bob")]),
            "[who] 3 here: Alice, bob, carol"
        );
    }
}

//! `chitty trace`: the Lamport sequence diagram of a run, drawn from the
//! JSON logs of its nodes and clients (the diagram records of
//! docs/logs.md).
//!
//! * [`parse`] reads each file, warning about (or refusing) what it cannot
//!   read, by file and line;
//! * [`order`] matches every send with its receive (by event id, or by call,
//!   participant and the Lamport time a request carried), orders the arrows
//!   by happens-before and Lamport time (never by wall clock), and applies
//!   the filters and the collapsed fan-out;
//! * [`mermaid`] and [`svg`] write the result. Every string from a log is
//!   untrusted and escaped for the output it goes into.

pub mod mermaid;
pub mod order;
pub mod parse;
pub mod svg;

use std::path::PathBuf;

/// A diagram: its lifelines from left to right, and what is drawn between
/// them from top to bottom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagram {
    pub lifelines: Vec<Lifeline>,
    pub items: Vec<Item>,
    /// Notes drawn above everything (what was left out).
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifeline {
    /// As shown: a participant's name, or `node N (ADDRESS)`. Unescaped.
    pub label: String,
    pub node: bool,
    /// The stand-in for a side whose log is not among the files.
    pub unknown: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// One call, relayed event or delivery, `from` and `to` indexing
    /// [`Diagram::lifelines`]. `dashed` for deliveries and replies.
    Arrow {
        from: usize,
        to: usize,
        label: String,
        dashed: bool,
    },
    /// The deliveries of one event, collapsed into a note over the
    /// lifelines `from..=to` (the nodes that delivered it).
    Broadcast {
        from: usize,
        to: usize,
        label: String,
    },
}

/// What to draw.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only what involves these participants (by name).
    pub participants: Vec<String>,
    /// Only arrows whose Lamport time (at the sender, or else at the
    /// receiver) is at least this.
    pub from_lamport: Option<u64>,
    pub to_lamport: Option<u64>,
    /// Only arrows logged (on either side) at or after this wall-clock time,
    /// in nanoseconds since 1970.
    pub since: Option<i128>,
    pub until: Option<i128>,
    /// The deliveries of one event to more participants than this are
    /// drawn as one "Broadcast" note.
    pub collapse_above: usize,
    /// Collapse every fan-out of two deliveries or more.
    pub collapse: bool,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A Mermaid `sequenceDiagram` (GitHub and GitLab render it in a
    /// ```mermaid block).
    Mermaid,
    /// A self-contained SVG picture.
    Svg,
}

/// Reads `(name, contents)` logs and draws their diagram; warnings (lines
/// skipped, sides missing) are added to `warnings`.
pub fn trace(
    logs: &[(String, String)],
    opts: &Options,
    warnings: &mut Vec<String>,
) -> Result<Diagram, String> {
    let mut files = Vec::with_capacity(logs.len());
    for (i, (name, text)) in logs.iter().enumerate() {
        files.push(parse::parse_log(i, name, text, warnings)?);
    }
    order::build(&files, opts, warnings)
}

/// Writes `diagram` in `format`.
pub fn render(diagram: &Diagram, format: Format) -> String {
    match format {
        Format::Mermaid => mermaid::render(diagram),
        Format::Svg => svg::render(diagram),
    }
}

/// `chitty trace`: reads the files, writes the diagram to `output` (or
/// stdout), warnings to stderr. Fails on an unreadable or unusable file.
pub fn run(
    files: &[PathBuf],
    format: Format,
    output: Option<&std::path::Path>,
    opts: &Options,
) -> Result<Vec<String>, String> {
    let mut logs = Vec::with_capacity(files.len());
    for path in files {
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| format!("{name}: cannot read: {e}"))?;
        // A log is UTF-8; a damaged byte is read as U+FFFD and its line
        // then fails to parse, with a warning.
        logs.push((name, String::from_utf8_lossy(&bytes).into_owned()));
    }
    let mut warnings = Vec::new();
    let diagram = trace(&logs, opts, &mut warnings)?;
    let text = render(&diagram, format);
    match output {
        Some(path) => std::fs::write(path, text)
            .map_err(|e| format!("{}: cannot write: {e}", path.display()))?,
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write the diagram: {e}"))?;
        }
    }
    Ok(warnings)
}

/// Shows `c` as itself in a label: not a control, separator or invisible
/// formatting character (which are written as `\u{...}`).
pub(crate) fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    crate::core::validate::escaped(text)
}

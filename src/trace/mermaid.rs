//! The diagram as a Mermaid `sequenceDiagram`.
//!
//! Lifelines get ids of our own (`L0`, `L1`, ...) and their names go in
//! `as` aliases; every label is escaped: ASCII punctuation that Mermaid
//! could read as syntax (`;`, `#`, `%`, `<`, `-`, ...) as a `#NN;` entity
//! code, characters a reader would not see as `\u{...}`.

use std::fmt::Write;

use super::{Diagram, Item};

/// The diagram as Mermaid source, ending with a newline.
pub fn render(d: &Diagram) -> String {
    let mut out = String::from("sequenceDiagram\n");
    for (i, l) in d.lifelines.iter().enumerate() {
        let _ = writeln!(out, "    participant L{i} as {}", text(&l.label));
    }
    let span = match d.lifelines.len() {
        0 => None,
        1 => Some("L0".to_string()),
        n => Some(format!("L0,L{}", n - 1)),
    };
    for note in &d.notes {
        match &span {
            Some(span) => {
                let _ = writeln!(out, "    Note over {span}: {}", text(note));
            }
            None => {
                // No lifeline to put it over: one for the note.
                let _ = writeln!(out, "    participant N as {}", text(note));
            }
        }
    }
    for item in &d.items {
        match item {
            Item::Arrow {
                from,
                to,
                label,
                dashed,
            } => {
                let arrow = if *dashed { "-->>" } else { "->>" };
                let _ = writeln!(out, "    L{from}{arrow}L{to}: {}", text(label));
            }
            Item::Broadcast { from, to, label } => {
                let over = if from == to {
                    format!("L{from}")
                } else {
                    format!("L{from},L{to}")
                };
                let _ = writeln!(out, "    Note over {over}: {}", text(label));
            }
        }
    }
    out
}

/// `s` escaped for a Mermaid label or alias.
pub fn text(s: &str) -> String {
    let shown = super::visible(s);
    let mut out = String::with_capacity(shown.len());
    for c in shown.chars() {
        if c.is_ascii_alphanumeric() || " .,:_()[]/?=@+*!'".contains(c) || !c.is_ascii() {
            out.push(c);
        } else {
            let _ = write!(out, "#{};", c as u32);
        }
    }
    // Leading and trailing spaces would be trimmed away.
    let lead = out.len() - out.trim_start_matches(' ').len();
    if lead == out.len() {
        return "#32;".repeat(lead.max(1));
    }
    let trail = out.len() - out.trim_end_matches(' ').len();
    if lead > 0 || trail > 0 {
        out = format!(
            "{}{}{}",
            "#32;".repeat(lead),
            out.trim_matches(' '),
            "#32;".repeat(trail)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{Diagram, Item, Lifeline};

    #[test]
    fn names_cannot_break_out_of_their_label() {
        let hostile = "X;\nparticipant Z as evil %%#<b>->>";
        let out = text(hostile);
        assert!(!out.contains('\n') && !out.contains('%') && !out.contains('<'));
        assert!(out.starts_with("X#59;"), "{out}");
        assert_eq!(text(" a "), "#32;a#32;");
        assert_eq!(text(""), "#32;");
        assert_eq!(text("Ünïcode → ok"), "Ünïcode → ok");
    }

    #[test]
    fn one_line_per_lifeline_and_item() {
        let d = Diagram {
            lifelines: vec![
                Lifeline {
                    label: "X".into(),
                    node: false,
                    unknown: false,
                },
                Lifeline {
                    label: "node 1 (127.0.0.1:1)".into(),
                    node: true,
                    unknown: false,
                },
            ],
            items: vec![
                Item::Arrow {
                    from: 0,
                    to: 1,
                    label: "Join [L=1 → L=2]".into(),
                    dashed: false,
                },
                Item::Arrow {
                    from: 1,
                    to: 0,
                    label: "Deliver X joined [L=2 → L=3]".into(),
                    dashed: true,
                },
                Item::Broadcast {
                    from: 1,
                    to: 1,
                    label: "Broadcast".into(),
                },
            ],
            notes: vec!["2 of 5 arrows left out".into()],
        };
        assert_eq!(
            render(&d),
            "sequenceDiagram\n    participant L0 as X\n    participant L1 as node 1 (127.0.0.1:1)\n    Note over L0,L1: 2 of 5 arrows left out\n    L0->>L1: Join [L=1 → L=2]\n    L1-->>L0: Deliver X joined [L=2 → L=3]\n    Note over L1: Broadcast\n"
        );
    }
}

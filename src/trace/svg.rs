//! The diagram as a self-contained SVG picture, written by hand: lifelines
//! with a header at both ends, one row per arrow or note, every label on a
//! white ground so lifelines never run through it.
//!
//! The layout is computed first ([`layout`]), with a box for every text,
//! so that a test can check that no two labels overlap; columns are spread
//! so that each arrow's label fits between the lifelines it joins. Text is
//! monospace, whose width is known from the number of characters.

use std::fmt::Write;

use super::{Diagram, Item};

/// Font size in pixels.
const FONT: f64 = 12.0;
/// The advance of one monospace character at [`FONT`] (DejaVu Sans Mono,
/// Menlo and Consolas are 0.6 em), with a little slack.
const CHAR_W: f64 = 7.4;
/// Height of a text box: ascent and descent.
const TEXT_H: f64 = 15.0;
const MARGIN: f64 = 16.0;
const PAD: f64 = 8.0;
const HEADER_H: f64 = 30.0;
const ROW: f64 = 34.0;
const NOTE_H: f64 = 24.0;

/// An axis-aligned box.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl Rect {
    /// Whether the two boxes share some area.
    pub fn overlaps(&self, o: &Rect) -> bool {
        self.x < o.x + o.w && o.x < self.x + self.w && self.y < o.y + o.h && o.y < self.y + self.h
    }

    fn right(&self) -> f64 {
        self.x + self.w
    }
}

/// Where everything goes.
#[derive(Debug, Clone)]
pub struct Layout {
    pub width: f64,
    pub height: f64,
    /// The x of each lifeline.
    pub xs: Vec<f64>,
    /// Header boxes, at the top and at the bottom.
    pub headers: Vec<Rect>,
    pub bottom_headers: Vec<Rect>,
    /// The boxes of the notes over all lifelines.
    pub notes: Vec<Rect>,
    /// For each item: the y of its arrow, and its label's text box.
    pub rows: Vec<(f64, Rect)>,
    /// Where the lifelines start and end.
    pub top: f64,
    pub bottom: f64,
}

impl Layout {
    /// The box of every text drawn: headers, notes and labels.
    pub fn text_boxes(&self) -> Vec<Rect> {
        self.headers
            .iter()
            .chain(&self.bottom_headers)
            .chain(&self.notes)
            .copied()
            .chain(self.rows.iter().map(|(_, r)| *r))
            .collect()
    }
}

/// The width of `s` as drawn, in pixels: wide (East Asian) characters take
/// two cells.
pub fn text_width(s: &str) -> f64 {
    let cells: usize = shown(s)
        .chars()
        .map(|c| if is_wide(c) { 2 } else { 1 })
        .sum();
    cells as f64 * CHAR_W
}

fn is_wide(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x115F | 0x2E80..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6 | 0x1F300..=0x1FAFF
        | 0x20000..=0x3FFFD)
}

/// `s` as it is drawn: what a reader would not see written as `\u{...}`.
fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    super::visible(s)
}

/// Lays `d` out.
pub fn layout(d: &Diagram) -> Layout {
    let n = d.lifelines.len();
    let header_w: Vec<f64> = d
        .lifelines
        .iter()
        .map(|l| (text_width(&l.label) + 2.0 * PAD).max(56.0))
        .collect();
    // Gaps between neighbouring lifelines: their headers side by side...
    let mut gaps: Vec<f64> = (1..n)
        .map(|i| (header_w[i - 1] / 2.0 + header_w[i] / 2.0 + 24.0).max(120.0))
        .collect();
    // ...and each arrow's label between the two lifelines it joins.
    let mut spans: Vec<(usize, usize, f64)> = d
        .items
        .iter()
        .filter_map(|item| match item {
            Item::Arrow {
                from, to, label, ..
            } if from != to => Some((
                *from.min(to),
                *from.max(to),
                text_width(label) + 2.0 * PAD + 16.0,
            )),
            _ => None,
        })
        .collect();
    spans.sort_by_key(|a| a.1 - a.0);
    for (lo, hi, need) in spans {
        let have: f64 = gaps[lo..hi].iter().sum();
        if have < need {
            let more = (need - have) / (hi - lo) as f64;
            for g in &mut gaps[lo..hi] {
                *g += more;
            }
        }
    }
    let mut xs = Vec::with_capacity(n);
    let mut x = MARGIN + header_w.first().copied().unwrap_or(0.0) / 2.0;
    for i in 0..n {
        if i > 0 {
            x += gaps[i - 1];
        }
        xs.push(x);
    }
    let header = |i: usize, y: f64| Rect {
        x: xs[i] - header_w[i] / 2.0,
        y,
        w: header_w[i],
        h: HEADER_H,
    };
    let headers: Vec<Rect> = (0..n).map(|i| header(i, MARGIN)).collect();
    let top = MARGIN + HEADER_H;
    let mut y = top + 12.0;

    let left = MARGIN;
    let span_right = headers.last().map_or(MARGIN, Rect::right);
    let mut notes = Vec::new();
    for note in &d.notes {
        let w = (text_width(note) + 2.0 * PAD).max(span_right - left);
        notes.push(Rect {
            x: left,
            y,
            w,
            h: NOTE_H,
        });
        y += NOTE_H + 10.0;
    }
    let mut rows = Vec::with_capacity(d.items.len());
    for item in &d.items {
        let line_y = y + ROW - 8.0;
        let label = match item {
            Item::Arrow {
                from, to, label, ..
            } if from != to => {
                let w = text_width(label);
                let mid = (xs[*from] + xs[*to]) / 2.0;
                Rect {
                    x: mid - w / 2.0,
                    y: line_y - 4.0 - TEXT_H,
                    w,
                    h: TEXT_H,
                }
            }
            // An arrow to itself: beside the lifeline.
            Item::Arrow { from, label, .. } => Rect {
                x: xs[*from] + 12.0 + PAD,
                y: line_y - 4.0 - TEXT_H,
                w: text_width(label),
                h: TEXT_H,
            },
            // A note: over the lifelines it spans.
            Item::Broadcast { from, to, label } => {
                let w = text_width(label);
                let mid = (xs[*from] + xs[*to]) / 2.0;
                Rect {
                    x: (mid - w / 2.0).max(MARGIN + PAD),
                    y: line_y - 4.0 - TEXT_H,
                    w,
                    h: TEXT_H,
                }
            }
        };
        rows.push((line_y, label));
        y += ROW;
    }
    let bottom = y + 16.0;
    let bottom_headers: Vec<Rect> = (0..n).map(|i| header(i, bottom)).collect();
    let right = headers
        .iter()
        .chain(&notes)
        .copied()
        .chain(rows.iter().map(|(_, r)| Rect { w: r.w + PAD, ..*r }))
        .map(|r| r.right())
        .fold(MARGIN, f64::max);
    Layout {
        width: (right + MARGIN).ceil(),
        height: (bottom + HEADER_H + MARGIN).ceil(),
        xs,
        headers,
        bottom_headers,
        notes,
        rows,
        top,
        bottom,
    }
}

/// `s` escaped for XML text or an attribute value: markup characters as
/// entities, what a reader would not see (and what XML forbids) written
/// as `\u{...}`.
pub fn xml(s: &str) -> String {
    let shown = shown(s);
    let mut out = String::with_capacity(shown.len());
    for c in shown.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\u{FFFE}' | '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// The colour of an arrow, by its call.
fn colour(label: &str) -> &'static str {
    match label.split(' ').next().unwrap_or("") {
        "Join" | "Publish" | "PublishStream" | "Leave" => "#1d4f91",
        "RelayBatch" => "#a34700",
        "Deliver" | "Broadcast" => "#2e6b30",
        "ServerJoin" | "ServerJoinReply" => "#6a2c8f",
        _ => "#333333",
    }
}

fn f(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r.fract() == 0.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// The SVG document.
pub fn render(d: &Diagram) -> String {
    let lay = layout(d);
    let mut o = String::new();
    let _ = writeln!(o, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="{FONT}">"#,
        w = f(lay.width),
        h = f(lay.height)
    );
    let _ = writeln!(o, "<title>Lamport sequence diagram (chitty trace)</title>");
    o.push_str("<defs>");
    for (id, c) in [
        ("call", "#1d4f91"),
        ("relay", "#a34700"),
        ("deliver", "#2e6b30"),
        ("mesh", "#6a2c8f"),
        ("other", "#333333"),
    ] {
        let _ = write!(
            o,
            r#"<marker id="head-{id}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{c}"/></marker>"#
        );
    }
    o.push_str("</defs>\n");
    o.push_str("<rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n");

    // Lifelines and their headers.
    for (i, l) in d.lifelines.iter().enumerate() {
        let x = f(lay.xs[i]);
        let _ = writeln!(
            o,
            "<line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{}\" stroke=\"#9aa0a6\" stroke-dasharray=\"4 4\"/>",
            f(lay.top),
            f(lay.bottom)
        );
        let (fill, stroke, dash) = match (l.node, l.unknown) {
            (_, true) => ("#eeeeee", "#777777", r#" stroke-dasharray="4 3""#),
            (true, _) => ("#e8eef8", "#1d4f91", ""),
            _ => ("#fdf3e1", "#a36b00", ""),
        };
        for r in [lay.headers[i], lay.bottom_headers[i]] {
            let _ = writeln!(
                o,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" rx=\"4\" fill=\"{fill}\" stroke=\"{stroke}\"{dash}/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                f(r.x),
                f(r.y),
                f(r.w),
                f(r.h),
                f(r.y + r.h / 2.0 + 4.0),
                xml(&l.label)
            );
        }
    }
    for (note, r) in d.notes.iter().zip(&lay.notes) {
        let _ = writeln!(
            o,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#fff8c4\" stroke=\"#b3a100\"/><text x=\"{}\" y=\"{}\">{}</text>",
            f(r.x),
            f(r.y),
            f(r.w),
            f(r.h),
            f(r.x + PAD),
            f(r.y + r.h / 2.0 + 4.0),
            xml(note)
        );
    }
    for (item, (line_y, label_box)) in d.items.iter().zip(&lay.rows) {
        let baseline = label_box.y + TEXT_H - 4.0;
        match item {
            Item::Arrow {
                from,
                to,
                label,
                dashed,
            } => {
                let c = colour(label);
                let marker = match c {
                    "#1d4f91" => "call",
                    "#a34700" => "relay",
                    "#2e6b30" => "deliver",
                    "#6a2c8f" => "mesh",
                    _ => "other",
                };
                let dash = if *dashed {
                    r#" stroke-dasharray="6 4""#
                } else {
                    ""
                };
                let (x1, x2) = (lay.xs[*from], lay.xs[*to]);
                if from == to {
                    let _ = writeln!(
                        o,
                        "<path d=\"M{} {} h28 v10 h-28\" fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\"{dash} marker-end=\"url(#head-{marker})\"/>",
                        f(x1),
                        f(line_y - 10.0)
                    );
                } else {
                    let end = if x2 > x1 { x2 - 1.0 } else { x2 + 1.0 };
                    let _ = writeln!(
                        o,
                        "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{c}\" stroke-width=\"1.5\"{dash} marker-end=\"url(#head-{marker})\"/>",
                        f(x1),
                        f(end),
                        y = f(*line_y)
                    );
                }
                let _ = writeln!(
                    o,
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#ffffff\" fill-opacity=\"0.9\"/><text x=\"{}\" y=\"{}\" fill=\"{c}\">{}</text>",
                    f(label_box.x - 2.0),
                    f(label_box.y),
                    f(label_box.w + 4.0),
                    f(label_box.h),
                    f(label_box.x),
                    f(baseline),
                    xml(label)
                );
            }
            Item::Broadcast { label, .. } => {
                let _ = writeln!(
                    o,
                    "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#eaf5e9\" stroke=\"#2e6b30\"/><text x=\"{}\" y=\"{}\" fill=\"#2e6b30\">{}</text>",
                    f(label_box.x - PAD),
                    f(label_box.y - 3.0),
                    f(label_box.w + 2.0 * PAD),
                    f(label_box.h + 6.0),
                    f(label_box.x),
                    f(baseline),
                    xml(label)
                );
            }
        }
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Lifeline;

    #[test]
    fn markup_in_names_is_escaped() {
        assert_eq!(
            xml("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&apos;"
        );
        assert_eq!(xml("a\u{1}b\u{202e}"), "a\\x01b\\u{202e}");
        assert_eq!(xml("\u{FFFF}"), "\u{FFFD}");
    }

    #[test]
    fn labels_fit_between_their_lifelines_and_never_overlap() {
        let lifelines: Vec<Lifeline> = [
            "X",
            "node 1 (127.0.0.1:50051)",
            "node 2 (127.0.0.1:50052)",
            "Y",
        ]
        .iter()
        .map(|l| Lifeline {
            label: l.to_string(),
            node: l.starts_with("node"),
            unknown: false,
        })
        .collect();
        let items: Vec<Item> = (0..30)
            .map(|i| Item::Arrow {
                from: i % 4,
                to: (i + 1 + i / 4) % 4,
                label: format!(
                    "RelayBatch a-rather-long-participant-name message [L={i} → L={}]",
                    i + 1
                ),
                dashed: i % 2 == 0,
            })
            .collect();
        let d = Diagram {
            lifelines,
            items,
            notes: vec!["3 of 33 arrows left out".into()],
        };
        let lay = layout(&d);
        let boxes = lay.text_boxes();
        for (i, a) in boxes.iter().enumerate() {
            for b in &boxes[i + 1..] {
                assert!(!a.overlaps(b), "{a:?} overlaps {b:?}");
            }
            assert!(a.x >= 0.0 && a.right() <= lay.width, "{a:?} outside");
        }
        for (item, (_, label)) in d.items.iter().zip(&lay.rows) {
            if let Item::Arrow { from, to, .. } = item
                && from != to
            {
                let (lo, hi) = (lay.xs[*from.min(to)], lay.xs[*from.max(to)]);
                assert!(
                    label.x > lo && label.right() < hi,
                    "{label:?} not within {lo}..{hi}"
                );
            }
        }
    }
}

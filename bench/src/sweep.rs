//! The scaling sweep: Chitty at full speed for S participants on N nodes,
//! a fresh cluster per point, and a picture of deliveries/s and p99 latency
//! against S, one line per N.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

use crate::on_chitty;
use crate::report::{Report, thousands};

/// Fewest messages of one point (for a meaningful p99).
const MIN_MESSAGES: u64 = 200;
/// Line colours, one per node count.
const COLORS: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
];

/// What the sweep runs.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// Every point's settings, but for nodes, participants, messages and
    /// what `--rate`, `--slow`, `--flood` and `--idle` add.
    pub base: on_chitty::Config,
    /// Node counts and participant counts of the points: each with each.
    pub nodes: Vec<usize>,
    pub participants: Vec<usize>,
    /// Deliveries each point aims at.
    pub deliveries: u64,
    /// Most messages one point sends, all publishers together.
    pub max_messages: u64,
    /// Added to the picture's caption.
    pub label: String,
}

/// Messages of all publishers together for a point with `participants`:
/// about `budget` deliveries, at least [`MIN_MESSAGES`] and at most `cap`
/// (small S would otherwise need many messages).
pub fn sweep_messages(participants: usize, budget: u64, cap: u64) -> u64 {
    (budget / participants as u64).clamp(MIN_MESSAGES, cap.max(MIN_MESSAGES))
}

/// Runs every point of the sweep's nodes × participants, writes the
/// JSON lines to `out/bench-results.jsonl` (one per point, as they finish)
/// and the picture to `out/bench-scaling.svg`. Returns the reports of the
/// points that ran.
pub async fn sweep(sweep: &Sweep, out: &Path) -> Result<Vec<Report>, String> {
    if sweep.nodes.contains(&0) || sweep.participants.contains(&0) {
        return Err("every sweep point needs at least 1 node and 1 participant".into());
    }
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let jsonl = out.join("bench-results.jsonl");
    let svg = out.join("bench-scaling.svg");
    let mut lines = String::new();
    let mut reports = Vec::new();
    for &nodes in &sweep.nodes {
        for &participants in &sweep.participants {
            let publishers = sweep.base.load.publishers.min(participants);
            let messages = sweep_messages(participants, sweep.deliveries, sweep.max_messages);
            let mut config = on_chitty::Config {
                slow: 0,
                flood: 0,
                idle: 0,
                ..sweep.base.clone()
            };
            config.load.nodes = nodes;
            config.load.participants = participants;
            config.load.publishers = publishers;
            config.load.messages = messages.div_ceil(publishers as u64);
            config.load.rate = None;
            eprintln!(
                "sweep: N={nodes} S={participants} P={publishers} M={} per publisher",
                config.load.messages
            );
            match on_chitty::run(&config).await {
                Ok(report) => {
                    eprintln!("{}", report.table());
                    println!("{}", report.to_json());
                    lines.push_str(&report.to_json());
                    lines.push('\n');
                    std::fs::write(&jsonl, &lines)
                        .map_err(|e| format!("cannot write {}: {e}", jsonl.display()))?;
                    reports.push(report);
                }
                Err(e) => eprintln!("sweep: N={nodes} S={participants} failed: {e}"),
            }
        }
    }
    let note = format!(
        "each point: a fresh cluster, about {} deliveries (messages = {}/S, at least {MIN_MESSAGES}, at most {}, split over the publishers); data in bench-results.jsonl",
        sweep.deliveries,
        sweep.deliveries,
        sweep.max_messages.max(MIN_MESSAGES)
    );
    let caption = if sweep.label.is_empty() {
        machine()
    } else {
        format!("{}, {}", machine(), sweep.label)
    };
    std::fs::write(&svg, scaling_svg(&reports, &caption, &note)?)
        .map_err(|e| format!("cannot write {}: {e}", svg.display()))?;
    eprintln!("sweep: wrote {} and {}", jsonl.display(), svg.display());
    Ok(reports)
}

/// "AMD EPYC ..., 2 cores", for captions.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores")
}

/// Two panels, deliveries/s and p99 latency against participants (log
/// scale), one line per node count; `machine` and `note` are captions. A
/// point whose run lost, repeated or reordered deliveries is drawn hollow:
/// its numbers are not comparable.
pub fn scaling_svg(reports: &[Report], machine: &str, note: &str) -> Result<String, String> {
    let mut svg = String::new();
    draw(&mut svg, reports, machine, note).map_err(|e| format!("cannot draw the sweep: {e}"))?;
    Ok(svg)
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(svg: &mut String, reports: &[Report], machine: &str, note: &str) -> DrawResult {
    let root = SVGBackend::with_string(svg, (1000, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let (publishers, size) = reports.first().map_or((0, 0), |r| (r.publishers, r.size));
    let root = root.titled(
        &format!(
            "Chitty at full speed: {publishers} publishers, {size}-byte messages, N local nodes, S participants"
        ),
        ("sans-serif", 18),
    )?;
    let (panels, captions) = root.split_vertically(370);
    let (left, right) = panels.split_horizontally(500);

    let max_rate = reports
        .iter()
        .map(|r| r.deliveries_per_sec)
        .fold(0.0, f64::max);
    draw_panel(
        &left,
        reports,
        "deliveries per second (all participants)",
        Axis::Linear(max_rate.max(1.0) * 1.1),
        |r| Some(r.deliveries_per_sec),
    )?;
    let p99s: Vec<f64> = reports
        .iter()
        .filter_map(|r| r.latency_p99_ms)
        .filter(|v| *v > 0.0)
        .collect();
    let lo = p99s.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = p99s.iter().cloned().fold(0.0, f64::max);
    let (lo, hi) = if p99s.is_empty() {
        (1.0, 10.0)
    } else {
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil()).max(lo * 10.0),
        )
    };
    draw_panel(
        &right,
        reports,
        "p99 publish-to-delivery latency (ms, log scale)",
        Axis::Log(lo, hi),
        |r| r.latency_p99_ms.filter(|v| *v > 0.0),
    )?;

    let grey = TextStyle::from(("sans-serif", 12)).color(&RGBColor(0x55, 0x55, 0x55));
    captions.draw(&Text::new(machine.to_string(), (60, 4), grey.clone()))?;
    if reports.iter().any(|r| !r.correct()) {
        captions.draw(&Text::new(
            "hollow point: deliveries were missing, duplicated or out of order",
            (60, 22),
            grey.clone(),
        ))?;
    }
    captions.draw(&Text::new(note.to_string(), (60, 40), grey))?;
    root.present()?;
    Ok(())
}

/// A panel's value axis.
enum Axis {
    /// From 0 to this.
    Linear(f64),
    /// Logarithmic, between these.
    Log(f64, f64),
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    reports: &[Report],
    title: &str,
    axis: Axis,
    value: impl Fn(&Report) -> Option<f64>,
) -> DrawResult {
    let participants = reports.iter().map(|r| r.participants as f64);
    let fewest = participants.clone().fold(f64::INFINITY, f64::min).min(1e9);
    let most = participants.fold(1.0, f64::max).max(fewest);
    let x_range = (fewest * 0.8..most * 1.25).log_scale();
    let mut chart = ChartBuilder::on(area);
    chart
        .caption(title, ("sans-serif", 14))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(80);
    match axis {
        Axis::Linear(top) => {
            let mut chart = chart.build_cartesian_2d(x_range, 0.0..top)?;
            draw_lines(&mut chart, reports, &value, &|y| thousands(*y))
        }
        Axis::Log(lo, hi) => {
            let mut chart = chart.build_cartesian_2d(x_range, (lo..hi).log_scale())?;
            draw_lines(&mut chart, reports, &value, &|y| format!("{y}"))
        }
    }
}

/// The grid, and a line with its points for each node count.
fn draw_lines<'a, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<LogCoord<f64>, Y>>,
    reports: &[Report],
    value: &impl Fn(&Report) -> Option<f64>,
    y_label: &dyn Fn(&f64) -> String,
) -> DrawResult
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("participants S (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(y_label)
        .draw()?;
    let mut node_counts: Vec<usize> = reports.iter().map(|r| r.nodes).collect();
    node_counts.sort_unstable();
    node_counts.dedup();
    for (i, &nodes) in node_counts.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points: Vec<(f64, f64, bool)> = reports
            .iter()
            .filter(|r| r.nodes == nodes)
            .filter_map(|r| Some((r.participants as f64, value(r)?, r.correct())))
            .collect();
        if points.is_empty() {
            continue;
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(x, y, _)| (x, y)),
                color.stroke_width(2),
            ))?
            .label(format!(
                "N = {nodes} node{}",
                if nodes == 1 { "" } else { "s" }
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        chart.draw_series(points.iter().map(|&(x, y, correct)| {
            let fill = if correct { color } else { WHITE };
            Circle::new((x, y), 4, fill.filled())
        }))?;
        chart.draw_series(
            points
                .iter()
                .map(|&(x, y, _)| Circle::new((x, y), 4, color.stroke_width(2))),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_send_about_the_budget_within_bounds() {
        assert_eq!(sweep_messages(3000, 300_000, 10_000), 200);
        assert_eq!(sweep_messages(3, 300_000, 10_000), 10_000);
        assert_eq!(sweep_messages(300, 300_000, 10_000), 1_000);
    }

    #[test]
    fn the_picture_has_a_line_per_node_count_in_each_panel() {
        let reports: Vec<Report> = [1, 3, 5]
            .into_iter()
            .flat_map(|n| {
                [3, 30, 300, 3000].into_iter().map(move |s| Report {
                    nodes: n,
                    participants: s,
                    delivered: 1,
                    deliveries_per_sec: (s * 1000 / n) as f64,
                    latency_p99_ms: Some(s as f64 / 10.0),
                    ..Report::default()
                })
            })
            .collect();
        let svg = scaling_svg(&reports, "test machine", "a note").unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        for nodes in ["N = 1 node\n", "N = 3 nodes\n", "N = 5 nodes\n"] {
            assert_eq!(svg.matches(nodes).count(), 2, "{nodes} in {svg}");
        }
        assert!(svg.contains("test machine") && svg.contains("a note"));
        assert!(!svg.contains("hollow point"));
    }
}

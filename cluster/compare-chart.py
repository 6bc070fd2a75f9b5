#!/usr/bin/env python3
"""Draws the runs of cluster/compare.sh as one SVG, Chitty beside NATS.

    cluster/compare-chart.py OUT/runs.jsonl "caption" > OUT/compare.svg

One row per case, three panels on log scales: deliveries per second, node
CPU per delivery, p99 latency. Each run is a mark (Chitty a circle, NATS a
square, the bench's floor servers a grey diamond), a line joins the runs of
one system. A run with a delivery
missing, duplicated or reordered, or with none delivered, is drawn hollow. Plain SVG, no plotting
library needed.
"""
import json
import math
import sys
from html import escape

def si(v):
    """10k, 1M: axis labels short enough not to run into the next panel."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if v >= size:
            return f"{v / size:g}{suffix}"
    return f"{v:g}"


PANELS = [
    ("deliveries per second (more is better)", "deliveries_per_sec", si),
    ("node CPU µs per delivery (less is better)", "server_cpu_us_per_delivery", lambda v: f"{v:g}"),
    ("p99 latency, ms (less is better)", "latency_p99_ms", lambda v: f"{v:g}"),
]
SYSTEMS = [
    ("chitty", "Chitty", "#1f77b4"),
    ("nats", "NATS", "#d62728"),
    ("floor", "floor (the stack alone)", "#777777"),
]
LABEL_W, PANEL_W, GAP, ROW_H, TOP = 250, 290, 30, 34, 70


def mark(system, x, y, fill, colour):
    """A run's mark: Chitty a circle, NATS a square, the floor a diamond."""
    if system == "chitty":
        return f'<circle cx="{x}" cy="{y}" r="4" fill="{fill}" stroke="{colour}" stroke-width="1.5"/>'
    if system == "nats":
        return (f'<rect x="{x - 4}" y="{y - 4}" width="8" height="8" fill="{fill}" '
                f'stroke="{colour}" stroke-width="1.5"/>')
    return (f'<polygon points="{x},{y - 5} {x + 5},{y} {x},{y + 5} {x - 5},{y}" fill="{fill}" '
            f'stroke="{colour}" stroke-width="1.5"/>')


def decades(values):
    lo = math.floor(math.log10(min(values)))
    hi = math.ceil(math.log10(max(values)))
    return lo, max(hi, lo + 1)


def main():
    runs = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    caption = sys.argv[2] if len(sys.argv) > 2 else ""
    cases = []
    for r in runs:
        if r["case"] not in cases:
            cases.append(r["case"])
    width = LABEL_W + len(PANELS) * (PANEL_W + GAP)
    height = TOP + len(cases) * ROW_H + 90
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="15">'
        "Chitty beside NATS, the same loads taking turns (cluster/compare.sh)</text>",
    ]
    for row, case in enumerate(cases):
        y = TOP + row * ROW_H + ROW_H / 2
        out.append(f'<text x="{LABEL_W - 10}" y="{y + 4}" text-anchor="end">{escape(case)}</text>')
    for p, (title, key, label) in enumerate(PANELS):
        x0 = LABEL_W + p * (PANEL_W + GAP)
        values = [r[key] for r in runs if r.get(key)]
        if not values:
            continue
        lo, hi = decades(values)
        pos = lambda v: x0 + PANEL_W * (math.log10(v) - lo) / (hi - lo)
        bottom = TOP + len(cases) * ROW_H
        out.append(f'<text x="{x0 + PANEL_W / 2}" y="{TOP - 25}" text-anchor="middle">{escape(title)}</text>')
        out.append(f'<rect x="{x0}" y="{TOP}" width="{PANEL_W}" height="{bottom - TOP}" fill="none" stroke="#888"/>')
        for d in range(lo, hi + 1):
            x = pos(10**d)
            out.append(f'<line x1="{x}" y1="{TOP}" x2="{x}" y2="{bottom}" stroke="#ddd"/>')
            out.append(f'<text x="{x}" y="{bottom + 15}" text-anchor="middle" font-size="10">{label(10**d)}</text>')
        for row, case in enumerate(cases):
            y = TOP + row * ROW_H + ROW_H / 2
            for s, (system, _, colour) in enumerate(SYSTEMS):
                yy = y + (s - 1) * 9
                mine = [r for r in runs if r["case"] == case and r["system"] == system and r.get(key)]
                if not mine:
                    continue
                xs = sorted(pos(r[key]) for r in mine)
                out.append(f'<line x1="{xs[0]}" y1="{yy}" x2="{xs[-1]}" y2="{yy}" stroke="{colour}" stroke-width="2"/>')
                for r in mine:
                    x = pos(r[key])
                    # As the bench's Report::correct: nothing missing,
                    # duplicated or reordered, and something delivered.
                    ok = (r["missing"] == 0 and r["duplicates"] == 0 and r["reordered"] == 0
                          and r.get("delivered", 0) > 0)
                    fill = colour if ok else "white"
                    out.append(mark(system, x, yy, fill, colour))
    legend_y = TOP + len(cases) * ROW_H + 40
    x = LABEL_W
    for system, name, colour in SYSTEMS:
        if not any(r["system"] == system for r in runs):
            continue
        out.append(mark(system, x, legend_y - 4, colour, colour))
        out.append(f'<text x="{x + 10}" y="{legend_y}">{name}</text>')
        x += 40 + 7 * len(name)
    out.append(f'<text x="{LABEL_W}" y="{legend_y + 20}" fill="#555">each mark one run; hollow: a delivery '
               'missing, duplicated or reordered, or none delivered; log scales</text>')
    out.append(f'<text x="{LABEL_W}" y="{legend_y + 40}" fill="#555">{escape(caption)}</text>')
    out.append("</svg>")
    print("\n".join(out))


if __name__ == "__main__":
    main()

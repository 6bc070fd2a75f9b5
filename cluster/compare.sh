#!/usr/bin/env bash
# Runs Chitty and NATS side by side on the same loads, alternately, and
# prints one table of what each run measured; the three main cases and the
# 10,000 idle one also run on the bench's floor servers (`chitty-bench
# --floor`, bench/src/floor.rs: the least a cluster on Chitty's stack does
# for the load, no chat logic):
#
#   cluster/compare.sh                 # 2 rounds of every case, into bench-results/compare-<date>-<commit>/
#   cluster/compare.sh --rounds 3 --out /tmp/compare
#   cluster/compare.sh --scale         # the scale runs too (3,000 participants, 5 nodes, 10,000 idle)
#
# The cases: S=30 and S=300 at full speed, S=30 at a steady 2,000 messages/s
# with one acknowledged call at a time (unary Publish, as the chat client
# publishes), each on 3 nodes with 3 publishers and 64-byte messages. The
# scale cases' steady rates are paced PublishStream on Chitty (--pipeline):
# NATS publishers never wait for an acknowledgement, and one unary call at a
# time cannot offer 100 messages/s per publisher to a room of 3,000. NATS's
# side of the 10,000 idle case is 10,030 readers, each on a connection of its
# own: the same deliveries, measured on all of them (Chitty's --idle ones
# read too, and count). Chitty runs with the bench's defaults: a connection
# per participant, nodes at their default log level. Each run's JSON line
# goes to OUT/runs.jsonl as soon as it ends; the table is OUT/table.md, the
# picture OUT/compare.svg (cluster/compare-chart.py). Needs nats-server
# (Debian: apt-get install nats-server). Run it on an otherwise quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."

rounds=2
scale=0
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
out="bench-results/compare-$(date -u +%Y%m%d-%H%M%S)-$commit"
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --scale) scale=1; shift ;;
        *) echo "unknown argument: $1 (see the comment at the top of $0)" >&2; exit 2 ;;
    esac
done
command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }

cargo build --release --quiet -p chitty-bench
bench=target/release/chitty-bench
mkdir -p "$out"
runs="$out/runs.jsonl"

# name|chitty arguments|nats arguments|floor arguments (none: not run)
cases=(
    "S=30, full speed|-s 30 -m 20000 --pipeline|-s 30 -m 20000|-s 30 -m 20000 --pipeline"
    "S=300, full speed|-s 300 -m 2000 --pipeline|-s 300 -m 2000|-s 300 -m 2000 --pipeline"
    "S=30, steady 2,000/s|-s 30 -m 4000 --rate 2000|-s 30 -m 4000 --rate 2000|-s 30 -m 4000 --rate 2000"
)
if [ "$scale" = 1 ]; then
    cases+=(
        "S=3,000, steady 300/s|-s 3000 -m 200 --rate 300 --pipeline|-s 3000 -m 200 --rate 300"
        "S=300 on 5 nodes, steady 1,000/s|--nodes 5 -s 300 -m 1000 --rate 1000 --pipeline|--nodes 5 -s 300 -m 1000 --rate 1000"
        "10,000 idle + 30, steady 2/s|-s 30 -m 7 --rate 2 --idle 10000|-s 10030 -m 7 --rate 2|-s 30 -m 7 --rate 2 --idle 10000"
    )
fi

run() {
    local name=$1 system=$2 args=$3 line
    case "$system" in
        nats) args="nats $args" ;;
        floor) args="--floor $args" ;;
    esac
    # shellcheck disable=SC2086
    line=$("$bench" $args --json 2>/dev/null | tail -n 1)
    printf '{"case":"%s",%s\n' "$name" "${line#\{}" >>"$runs"
    echo "$name, $system: done" >&2
}

for round in $(seq 1 "$rounds"); do
    for c in "${cases[@]}"; do
        IFS='|' read -r name chitty nats floor <<<"$c"
        # Alternate which system goes first, so neither always runs on a
        # machine the other has just warmed.
        if [ $((round % 2)) = 1 ]; then
            run "$name" chitty "$chitty"
            [ -n "$nats" ] && run "$name" nats "$nats"
        else
            [ -n "$nats" ] && run "$name" nats "$nats"
            run "$name" chitty "$chitty"
        fi
        if [ -n "$floor" ]; then run "$name" floor "$floor"; fi
    done
done

python3 - "$runs" >"$out/table.md" <<'EOF'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["case"], {}).setdefault(r["system"], []).append(r)
def span(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return ""
    lo, hi = fmt(min(values)), fmt(max(values))
    return lo if lo == hi else f"{lo}-{hi}"
print("| case | system | deliveries/s | node CPU µs/delivery | p50 / p99 ms | missing / dup / reordered | memory |")
print("|---|---|---|---|---|---|---|")
for case, systems in rows.items():
    for system in ("nats", "chitty", "floor"):
        runs = systems.get(system)
        if not runs:
            continue
        idle = span([r.get("idle_rss_bytes_per_participant") for r in runs], lambda v: f"{v/1024:.1f}")
        memory = f"{idle} KiB per idle participant" if idle else \
            span([r["peak_rss_bytes_per_node"] for r in runs], lambda v: f"{v/2**20:.0f}") + " MiB peak per node"
        print("| {} | {} | {} | {} | {} / {} | {} | {} |".format(
            case, system,
            span([r["deliveries_per_sec"] for r in runs], lambda v: f"{v/1e6:.2f}M" if v >= 1e6 else f"{v:,.0f}"),
            span([r["server_cpu_us_per_delivery"] for r in runs], lambda v: f"{v:.2f}"),
            span([r["latency_p50_ms"] for r in runs], lambda v: f"{v:.2f}"),
            span([r["latency_p99_ms"] for r in runs], lambda v: f"{v:.2f}"),
            " ; ".join(f'{r["missing"]}/{r["duplicates"]}/{r["reordered"]}' for r in runs),
            memory,
        ))
EOF
machine="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
python3 cluster/compare-chart.py "$runs" \
    "$machine, commit $commit, $(date -u +%F), $rounds round(s) of each case" >"$out/compare.svg"
cat "$out/table.md"
echo "runs: $runs; picture: $out/compare.svg" >&2

#!/usr/bin/env bash
# Runs the scaling sweep of chitty-bench and draws it:
#
#   cluster/sweep.sh                          # into bench-results/<date>-<commit>/ (git-ignored)
#   cluster/sweep.sh --out /tmp/sweep --sweep-deliveries 100000
#   cluster/sweep.sh --docs                   # over docs/bench-results.jsonl and docs/bench-scaling.svg
#
# For S = 3, 30, 300, 3000 participants on N = 1, 3, 5 local nodes, each point
# starts a fresh cluster, sends about 300,000 deliveries' worth of 64-byte
# messages from 3 pipelined publishers at full speed (300000 / S messages in
# all, at least 200, at most 2000), and appends its JSON line to
# bench-results.jsonl as soon as it ends. The picture (throughput and p99
# against S, one line per N) is bench-scaling.svg beside it, drawn by the
# bench itself: no plotting tools needed. Only --docs writes over the files
# the README and docs/bench.md show. Other arguments go to chitty-bench (see
# `cargo run --release -p chitty-bench -- --help`).
#
# Takes a minute or two on a 2-core machine. Numbers depend on the machine and on
# whatever else runs on it: the SVG caption names the CPU, and a quiet machine
# gives steadier results.
set -euo pipefail
cd "$(dirname "$0")/.."

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
label="commit $commit"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    label="$label with local changes"
    commit="$commit-changed"
fi
out=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --docs) out=docs ;;
        --out) out="$2"; shift ;;
        --out=*) out="${1#--out=}" ;;
        *) args+=("$1") ;;
    esac
    shift
done
[ -n "$out" ] || out="bench-results/$(date -u +%Y%m%d-%H%M%S)-$commit"

cargo build --release --quiet -p chitty-bench
exec target/release/chitty-bench --sweep --pipeline --out "$out" \
    --sweep-label "$label, $(date -u +%Y-%m-%d)" "${args[@]}"

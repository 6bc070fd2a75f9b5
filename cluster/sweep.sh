#!/usr/bin/env bash
# Runs the scaling sweep of `chitty bench` and draws it:
#
#   cluster/sweep.sh                 # writes docs/bench-results.jsonl and docs/bench-scaling.svg
#   cluster/sweep.sh --sweep-deliveries 100000 --out /tmp/sweep
#
# For S = 3, 30, 300, 3000 participants on N = 1, 3, 5 local nodes, each point
# starts a fresh cluster, sends about 300,000 deliveries' worth of 64-byte
# messages from 3 pipelined publishers at full speed (messages = 300000 / S, at least
# 200, at most 2000), and appends its JSON line to bench-results.jsonl as soon
# as it ends.
# The picture (throughput and p99 against S, one line per N) is written by
# the bench itself: no plotting tools needed. Extra arguments go to
# `chitty bench` (see `chitty bench --help`).
#
# Takes a minute or two on a 2-core machine. Numbers depend on the machine and on
# whatever else runs on it: the SVG caption names the CPU, and a quiet machine
# gives steadier results.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --quiet
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    commit="$commit with local changes"
fi
exec target/release/chitty bench --sweep --pipeline --sweep-label "commit $commit, $(date -u +%Y-%m-%d)" "$@"

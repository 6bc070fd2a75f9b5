#!/usr/bin/env bash
# Counts the instructions three Chitty nodes execute for one bench load,
# with valgrind's callgrind: a count that, unlike CPU time, hardly depends
# on what else the machine is doing, so two builds can be compared on a
# busy machine. The nodes run under valgrind (about 50 times slower); the
# bench runs natively against them (`--servers`).
#
#   cluster/callgrind.sh                                   # this checkout's build, -s 30 -m 2000 --pipeline
#   cluster/callgrind.sh --bin /tmp/old-chitty -- -s 30 -m 600 --rate 300
#   cluster/callgrind.sh --out /tmp/cg -- -s 30 -m 2000 --pipeline
#
# Prints each node's total and the sum. OUT/node<N>.callgrind are the
# profiles (callgrind_annotate OUT/node2.callgrind, --inclusive=yes for
# totals per function). Counts include each node's start and stop, and the
# batching under valgrind depends on timing too: repeated runs of one build
# differ by a few per cent. valgrind hides the CPU's SHA instructions, so
# SHA-256 is counted at its portable implementation. Needs valgrind
# (Debian: apt-get install valgrind).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=""
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "unknown argument: $1 (see the comment at the top of $0)" >&2; exit 2 ;;
    esac
done
load=("$@")
[ ${#load[@]} -gt 0 ] || load=(-s 30 -m 2000 --pipeline)
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }

cargo build --release -q -p chitty -p chitty-bench
[ -n "$bin" ] || bin=target/release/chitty
[ -n "$out" ] || out=$(mktemp -d)
mkdir -p "$out"
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# Starts node N under callgrind (joining BOOT, if given); sets addr to its
# address. (Not run in a subshell: pids must keep the node's pid.)
start() {
    local n=$1 boot=${2:-}
    local args=(server --listen 127.0.0.1:0 --publish-rate=0 --max-connections-per-ip=20000)
    [ -z "$boot" ] || args+=(--boot "$boot")
    # Made here, not by the redirection of the job below, which may come
    # after the first look for the address.
    : >"$work/node$n.out"
    valgrind --tool=callgrind --callgrind-out-file="$out/node$n.callgrind" \
        "$bin" "${args[@]}" >"$work/node$n.out" 2>"$work/node$n.err" &
    pids+=($!)
    local deadline=$((SECONDS + 120))
    addr=""
    while [ -z "$addr" ]; do
        addr=$(sed -n 's/^chitty server listening on //p' "$work/node$n.out" | head -1)
        if [ $SECONDS -ge $deadline ] || ! kill -0 "${pids[-1]}" 2>/dev/null; then
            echo "node $n did not start; its log:" >&2
            cat "$work/node$n.err" >&2
            exit 1
        fi
        [ -n "$addr" ] || sleep 0.1
    done
}

start 1; a=$addr
start 2 "$a"; b=$addr
start 3 "$a"; c=$addr
target/release/chitty-bench --servers "$a,$b,$c" --timeout-secs 1200 "${load[@]}"

# callgrind writes a profile when its process exits: stop the nodes.
kill -TERM "${pids[@]}"
for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
done
pids=()
total=0
for n in 1 2 3; do
    count=$(sed -n 's/^summary: //p' "$out/node$n.callgrind")
    echo "node $n: $count instructions"
    total=$((total + count))
done
echo "all three: $total instructions (profiles in $out)"

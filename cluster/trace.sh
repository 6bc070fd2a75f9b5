#!/usr/bin/env bash
# Runs the assignment's scenario on a two-node cluster and draws its Lamport
# sequence diagram from the JSON logs of the nodes and clients:
#
#   X joins node 1, Y joins node 2, X publishes, Y replies, X leaves.
#
#   cluster/trace.sh                       # writes docs/sequence.md and docs/sequence.svg
#   OUT=/tmp/hand-in cluster/trace.sh      # writes them elsewhere
#
# The nodes listen on ports the system picks (127.0.0.1:0; each prints its
# address on its first line), so nothing else that runs is in the way. The
# logs are kept in target/trace-run (LOGS=DIR to change; only the files named
# below are replaced there, nothing else is removed): nodeN.jsonl is a
# node's stderr, x.jsonl and y.jsonl the clients' --log files, and
# scenario/ holds them as they were when X had left, which is what is drawn.
# To draw your own run instead, see "The sequence diagram of a run" in the
# README.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
logs=${LOGS:-$root/target/trace-run}
out=${OUT:-$root/docs}

echo "trace: building (cargo build)" >&2
cargo build --quiet --bin chitty
bin=$root/target/debug/chitty

# Only the files this script writes are removed (LOGS may name a directory
# that holds other things): a previous run's, by name.
written=(cluster-secret x.in y.in x.jsonl x.out x.err y.jsonl y.out y.err
         node1.out node1.jsonl node2.out node2.jsonl
         scenario/node1.jsonl scenario/node2.jsonl scenario/x.jsonl scenario/y.jsonl)
for f in "${written[@]}"; do rm -f -- "$logs/$f"; done
mkdir -p "$logs/scenario" "$out"
secret_file=$logs/cluster-secret
(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$secret_file")
export CHITTY_CLUSTER_SECRET_FILE=$secret_file
unset CHITTY_CLUSTER_SECRET CHITTY_LOG_FORMAT CHITTY_LOG RUST_LOG

pids=()
stop() {
    trap - EXIT INT TERM
    exec 3>&- 4>&-
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -f "$logs/x.in" "$logs/y.in"
}
trap stop EXIT INT TERM

# Waits (10 s at most) until FILE has a line matching the extended regular
# expression PATTERN.
wait_for() {
    local file=$1 pattern=$2 what=$3
    for _ in $(seq 1 100); do
        if grep -Eq -- "$pattern" "$file" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "trace: timed out waiting for $what (in $file)" >&2
    exit 1
}

# Starts node N (with more flags) and sets $addr to its address, the first
# line it prints. Deliveries and relay acknowledgements are DEBUG records
# (docs/logs.md).
start_node() {
    local n=$1
    shift
    RUST_LOG=info,chitty::diagram=debug "$bin" server --listen 127.0.0.1:0 --log-format json "$@" \
        > "$logs/node$n.out" 2> "$logs/node$n.jsonl" 3>&- 4>&- &
    pids+=($!)
    wait_for "$logs/node$n.out" '^chitty server listening on ' "node $n to start"
    addr=$(sed -n '1s/^chitty server listening on //p' "$logs/node$n.out")
}

start_node 1
node1=$addr
start_node 2 --boot "$node1"
node2=$addr
wait_for "$logs/node2.jsonl" '"call":"ServerJoinReply"' "node 2 to join node 1"
echo "trace: node 1 on $node1, node 2 on $node2" >&2

# A client reads what it publishes from a pipe this script holds open
# (fd 3 for X, 4 for Y); closing it is end of input, which means leave.
mkfifo "$logs/x.in" "$logs/y.in"
"$bin" client --name X --server "$node1" --log "$logs/x.jsonl" --log-format json \
    < "$logs/x.in" > "$logs/x.out" 2> "$logs/x.err" 4>&- &
pids+=($!)
x_pid=$!
exec 3> "$logs/x.in"
wait_for "$logs/x.out" 'Participant X joined' "X to join"
# Y joins once node 2 has X's join (else node 2 would deliver it to Y too).
wait_for "$logs/node2.jsonl" '"call":"RelayBatch","dir":"received".*"kind":"joined"' "X's join to reach node 2"

"$bin" client --name Y --server "$node2" --log "$logs/y.jsonl" --log-format json \
    < "$logs/y.in" > "$logs/y.out" 2> "$logs/y.err" 3>&- &
pids+=($!)
exec 4> "$logs/y.in"
wait_for "$logs/y.out" 'Participant Y joined' "Y to join"
wait_for "$logs/x.out" 'Participant Y joined' "X to see Y join"

echo "hello from X" >&3
wait_for "$logs/y.out" '\] X: hello from X$' "Y to receive X's message"
echo "hi X" >&4
wait_for "$logs/x.out" '\] Y: hi X$' "X to receive Y's reply"

exec 3>&-
wait "$x_pid" || { echo "trace: X did not leave cleanly; see $logs/x.err" >&2; exit 1; }
wait_for "$logs/y.out" 'Participant X left' "Y to see X leave"
wait_for "$logs/y.jsonl" '"call":"Deliver".*"kind":"left"' "Y to log X's departure"
wait_for "$logs/node2.jsonl" '"call":"Deliver","dir":"sent".*"kind":"left"' "node 2 to log X's departure"

# The logs as they are now, in whole lines (the nodes are still writing).
for f in node1 node2 x y; do
    lines=$(wc -l < "$logs/$f.jsonl")
    head -n "$lines" "$logs/$f.jsonl" > "$logs/scenario/$f.jsonl"
done
stop

files=("$logs/scenario/node1.jsonl" "$logs/scenario/node2.jsonl" "$logs/scenario/x.jsonl" "$logs/scenario/y.jsonl")
"$bin" trace "${files[@]}" --format svg -o "$out/sequence.svg"
mermaid=$("$bin" trace "${files[@]}" --format mermaid)
cat > "$out/sequence.md" <<EOF
# The assignment's scenario as a Lamport sequence diagram

X joins node 1, Y joins node 2, X publishes, Y replies, X leaves: one real run on a two-node
cluster, drawn by \`chitty trace\` from the JSON logs of both nodes and both clients. Made by
\`cluster/trace.sh\`, which ran it; run it again to draw a new run.

Each arrow is one call, relayed event or delivery (dashed: deliveries on a participant's Join
stream, and replies), labelled \`[L=sent → L=received]\`: the Lamport time the message carried
(for a participant's request, its clock after the tick; for a relayed or delivered event, the
event's stamp) and the receiver's clock after the clock rule (\`max(local, received) + 1\`).
The arrows are ordered by happens-before and Lamport time, not by wall clock. The same diagram
as a picture: [sequence.svg](sequence.svg).

\`\`\`mermaid
$mermaid
\`\`\`
EOF
echo "trace: wrote $out/sequence.md and $out/sequence.svg (logs in $logs)" >&2

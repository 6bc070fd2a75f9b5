#!/usr/bin/env bash
# Runs a local Chitty cluster of N nodes (default 3) in this terminal.
#
#   cluster/run.sh            # 3 nodes on 127.0.0.1:50051..50053
#   cluster/run.sh 5          # 5 nodes
#   BASE_PORT=6000 cluster/run.sh
#   CHITTY_TLS=1 cluster/run.sh   # with TLS: a development CA in target/tls
#
# Checks that the ports are free, builds once, starts node 1 as the boot
# node and joins each next node through the previous one. Every log line is
# prefixed with its node's name. Ctrl-C stops all nodes (each leaves the
# cluster gracefully).
set -euo pipefail

nodes=${1:-3}
base=${BASE_PORT:-50051}
cd "$(dirname "$0")/.."
# The cluster secret: every node needs it, and a node you add by hand too.
# Kept in a file readable by you alone, never on a command line (where any
# user could read it with ps).
secret_file=${CHITTY_CLUSTER_SECRET_FILE:-$PWD/target/cluster-secret}
if [ ! -s "$secret_file" ]; then
    mkdir -p "$(dirname "$secret_file")"
    (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$secret_file")
fi
export CHITTY_CLUSTER_SECRET_FILE=$secret_file
unset CHITTY_CLUSTER_SECRET

# Nothing may already listen on the ports (a cluster from an earlier run,
# say): a node that cannot listen would fail while this script went on.
for i in $(seq 1 "$nodes"); do
    port=$((base + i - 1))
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "cluster: port $port is in use (is a cluster already running?); stop it or pick other ports: BASE_PORT=6000 $0 $nodes" >&2
        exit 1
    fi
done

echo "cluster: building (cargo build --release)" >&2
cargo build --release
bin=target/release/chitty

# With CHITTY_TLS=1: a development CA and one certificate per node in
# target/tls (made once, kept), and every node and client on TLS.
tls_dir=$PWD/target/tls
tls_node_args() { :; }
client_tls=""
if [ "${CHITTY_TLS:-0}" = 1 ]; then
    [ -s "$tls_dir/ca.pem" ] || "$bin" cert ca --out "$tls_dir" >&2
    for i in $(seq 1 "$nodes"); do
        [ -s "$tls_dir/node$i.pem" ] || "$bin" cert node --ca "$tls_dir" --name "node$i" >&2
    done
    tls_node_args() {
        args+=(--tls-cert "$tls_dir/node$1.pem" --tls-key "$tls_dir/node$1-key.pem" --tls-ca "$tls_dir/ca.pem")
    }
    client_tls=" --tls-ca $tls_dir/ca.pem"
fi

pids=()
stop() {
    trap - INT TERM EXIT
    echo "cluster: stopping ${#pids[@]} nodes (each leaves the cluster)" >&2
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "cluster: stopped" >&2
}
trap stop INT TERM EXIT

# Waits until a node answers on its port (bounded).
wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "cluster: node on port $1 did not start" >&2
    return 1
}

prev=""
for i in $(seq 1 "$nodes"); do
    port=$((base + i - 1))
    args=(server --listen "127.0.0.1:$port")
    [ -n "$prev" ] && args+=(--boot "$prev")
    tls_node_args "$i"
    # Prefix each line with the node's name; $! is the pid of the node
    # itself. The prefixers ignore Ctrl-C (which the terminal sends to every
    # process of the script): they must outlive the nodes to show them
    # leaving, and they end when the nodes close their output.
    "$bin" "${args[@]}" > >(trap '' INT; exec sed -u "s/^/[node$i] /") \
        2> >(trap '' INT; exec sed -u "s/^/[node$i] /" >&2) &
    pids+=($!)
    wait_port "$port"
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then
        echo "cluster: node$i exited; see its lines above" >&2
        exit 1
    fi
    prev="127.0.0.1:$port"
done
all=$(for i in $(seq 1 "$nodes"); do printf '127.0.0.1:%s,' $((base + i - 1)); done)
all=${all%,}

cat >&2 <<MSG
cluster: $nodes nodes running on 127.0.0.1:$base..$((base + nodes - 1))
cluster: connect clients from other terminals, for example:
  $bin client --name Alice --server 127.0.0.1:$base$client_tls
  $bin client --name Bob   --server 127.0.0.1:$((base + nodes - 1))$client_tls
cluster: kill a node to watch failover: kill -9 <pid> (pids: ${pids[*]})
cluster: the cluster secret is in $secret_file; add a node with
  $bin server --listen 127.0.0.1:$((base + nodes)) --boot $all --cluster-secret-file $secret_file
cluster: Ctrl-C stops every node
MSG
if [ -n "$client_tls" ]; then
    cat >&2 <<MSG
cluster: TLS is on: the CA and node certificates are in $tls_dir; a node you add needs its own,
  $bin cert node --ca $tls_dir --name node$((nodes + 1))
  and --tls-cert $tls_dir/node$((nodes + 1)).pem --tls-key $tls_dir/node$((nodes + 1))-key.pem --tls-ca $tls_dir/ca.pem
MSG
fi
wait

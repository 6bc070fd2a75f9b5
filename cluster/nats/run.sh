#!/usr/bin/env bash
# Start a 3-node nats-server cluster on 127.0.0.1, wait for full mesh, run the bench,
# then stop the servers. All arguments are passed to the bench binary.
#   ./run.sh --subs 30 --pubs 3 --msgs 60000
#   ./run.sh --subs 30 --msgs 6000 --rate 2000
set -euo pipefail
cd "$(dirname "$0")"

BIN=./target/release/chitty-nats-compare
[ -x "$BIN" ] || cargo build --release
command -v nats-server >/dev/null || { echo "nats-server not installed (apt-get install -y nats-server)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/nats-compare.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# pick 9 distinct free loopback TCP ports
USED=$(ss -Htan | awk '{print $4}' | sed 's/.*://' | sort -u)
PORTS=()
while [ "${#PORTS[@]}" -lt 9 ]; do
  p=$(( 20000 + RANDOM % 40000 ))
  if ! grep -qx "$p" <<<"$USED" && [[ " ${PORTS[*]:-} " != *" $p "* ]]; then PORTS+=("$p"); fi
done
CP=("${PORTS[@]:0:3}"); RP=("${PORTS[@]:3:3}"); MP=("${PORTS[@]:6:3}")

for i in 0 1 2; do
  routes=""
  for j in 0 1 2; do [ "$j" != "$i" ] && routes="${routes:+$routes,}nats://127.0.0.1:${RP[$j]}"; done
  nats-server -a 127.0.0.1 -p "${CP[$i]}" -m "${MP[$i]}" -n "n$i" \
    --cluster_name bench -cluster "nats://127.0.0.1:${RP[$i]}" -routes "$routes" \
    --no_advertise -l "$WORK/n$i.log" &
  PIDS+=($!)
done

# wait until every server reports 2 routes (full mesh)
deadline=$(( $(date +%s) + 30 ))
for i in 0 1 2; do
  while :; do
    n=$(curl -s "http://127.0.0.1:${MP[$i]}/routez" | grep -o '"num_routes": *[0-9]*' | grep -o '[0-9]*$' || true)
    [ "${n:-0}" -ge 2 ] && break
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null || { echo "nats-server pid $p exited early" >&2; exit 1; }; done
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "cluster did not form (server n$i has ${n:-0} routes)" >&2
      tail -n 20 "$WORK"/n*.log >&2 || true
      exit 1
    fi
    sleep 0.1
  done
done
echo "cluster up: clients ${CP[*]} routes ${RP[*]} monitor ${MP[*]} pids ${PIDS[*]} ($(nats-server --version))" >&2

set +e
"$BIN" \
  --urls "nats://127.0.0.1:${CP[0]},nats://127.0.0.1:${CP[1]},nats://127.0.0.1:${CP[2]}" \
  --pids "${PIDS[0]},${PIDS[1]},${PIDS[2]}" \
  --monitors "127.0.0.1:${MP[0]},127.0.0.1:${MP[1]},127.0.0.1:${MP[2]}" \
  --clk-tck "$(getconf CLK_TCK)" \
  "$@"
rc=$?
set -e
if grep -qi 'slow consumer' "$WORK"/n*.log; then
  echo "server logs mention slow consumers:" >&2
  grep -i 'slow consumer' "$WORK"/n*.log | head -n 5 >&2
fi
exit $rc

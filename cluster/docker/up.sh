#!/usr/bin/env bash
# Starts the three-node compose cluster: builds the image if it is missing,
# makes a cluster secret if there is none (cluster/docker/secrets/, readable
# only by you on this host), then `docker-compose up -d` and waits until
# every node is healthy. With --tls, over TLS (compose.tls.yml), with
# certificates make-certs.sh makes if there are none.
# Usage: cluster/docker/up.sh [--build] [--tls]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
build=false
files=(-f compose.yml)
for arg in "$@"; do
    case "$arg" in
        --build) build=true ;;
        --tls) files+=(-f compose.tls.yml) ;;
        *) echo "usage: $0 [--build] [--tls]" >&2; exit 2 ;;
    esac
done
if $build || ! docker image inspect "${CHITTY_IMAGE:-chitty:latest}" >/dev/null 2>&1; then
    ./build-image.sh
fi
install -d -m 700 secrets
if [ "${#files[@]}" -gt 2 ]; then
    ./make-certs.sh "${CHITTY_TLS_DIR:-$here/secrets/tls}"
fi
if [ -z "${CHITTY_SECRET_FILE:-}" ] && [ ! -s secrets/cluster-secret ]; then
    # The containers' user (65532) reads the file through its bind mount;
    # the directory keeps other users of this host out.
    head -c 32 /dev/urandom | base64 > secrets/cluster-secret
    chmod 644 secrets/cluster-secret
    echo "made the cluster secret: $here/secrets/cluster-secret"
fi
docker-compose "${files[@]}" up -d
echo "waiting for the nodes to be healthy..."
for _ in $(seq 1 60); do
    healthy=0
    for id in $(docker-compose "${files[@]}" ps -q node1 node2 node3); do
        [ "$(docker inspect --format '{{.State.Health.Status}}' "$id")" = healthy ] && healthy=$((healthy + 1))
    done
    if [ "$healthy" = 3 ]; then
        echo "3 nodes healthy. Chat:   cd $here && docker-compose ${files[*]} run --rm client --name Alice"
        echo "Kill a node:            docker-compose kill node2"
        echo "Logs:                   docker-compose logs -f"
        echo "Stop everything:        docker-compose ${files[*]} down"
        exit 0
    fi
    sleep 1
done
echo "error: the nodes are not all healthy after 60 s:" >&2
docker-compose "${files[@]}" ps >&2
exit 1

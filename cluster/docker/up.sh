#!/usr/bin/env bash
# Starts the three-node compose cluster: builds the image if it is missing,
# makes a cluster secret if there is none (cluster/docker/secrets/, readable
# only by you on this host), then `docker-compose up -d` and waits until
# every node is healthy. Usage: cluster/docker/up.sh [--build]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
if [ "${1:-}" = "--build" ] || ! docker image inspect "${CHITTY_IMAGE:-chitty:latest}" >/dev/null 2>&1; then
    ./build-image.sh
fi
if [ -z "${CHITTY_SECRET_FILE:-}" ] && [ ! -s secrets/cluster-secret ]; then
    mkdir -p secrets
    chmod 700 secrets
    # The containers' user (65532) reads the file through its bind mount;
    # the directory keeps other users of this host out.
    head -c 32 /dev/urandom | base64 > secrets/cluster-secret
    chmod 644 secrets/cluster-secret
    echo "made the cluster secret: $here/secrets/cluster-secret"
fi
docker-compose up -d
echo "waiting for the nodes to be healthy..."
for _ in $(seq 1 60); do
    healthy=0
    for id in $(docker-compose ps -q node1 node2 node3); do
        [ "$(docker inspect --format '{{.State.Health.Status}}' "$id")" = healthy ] && healthy=$((healthy + 1))
    done
    if [ "$healthy" = 3 ]; then
        echo "3 nodes healthy. Chat:   cd $here && docker-compose run --rm client --name Alice"
        echo "Kill a node:            docker-compose kill node2"
        echo "Logs:                   docker-compose logs -f"
        echo "Stop everything:        docker-compose down"
        exit 0
    fi
    sleep 1
done
echo "error: the nodes are not all healthy after 60 s:" >&2
docker-compose ps >&2
exit 1

#!/usr/bin/env bash
# Makes a development CA and certificates for node1..node3 (valid for their
# service names, localhost and 127.0.0.1) with `chitty cert`, run in the
# image as its user (65532), so the keys are that user's with mode 0600:
# the nodes can read them, and on this host nobody else but root.
# Usage: cluster/docker/make-certs.sh DIR   (default: cluster/docker/secrets/tls)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${1:-$here/secrets/tls}"
image="${CHITTY_IMAGE:-chitty:latest}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
if [ -e "$dir/ca.pem" ]; then
    echo "$dir/ca.pem exists: keeping the certificates there" >&2
    exit 0
fi
# The image's user must be able to write the files; the directory is
# closed again afterwards (the keys themselves are 0600).
chmod 1777 "$dir"
trap 'chmod 755 "$dir"' EXIT
cert() {
    docker run --rm --user 65532:65532 --network none -v "$dir:/tls" "$image" cert "$@"
}
cert ca --out /tls
for node in node1 node2 node3; do
    cert node --ca /tls --name "$node" --san "$node" --san localhost --san 127.0.0.1 --out /tls
done
echo "made a CA and certificates for node1..node3 in $dir"

#!/usr/bin/env bash
# Makes a development CA and certificates for node1..node3 (valid for their
# service names, localhost and 127.0.0.1) with `chitty cert`, run in the
# image as its user (65532), so the keys are owned by uid 65532 with mode
# 0600: the nodes can read them; on this host, root and whoever has uid
# 65532 (often "nonroot" or nobody at all) can.
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
# The image's user writes the files into a fresh directory beside DIR (on
# the same file system, so moving them keeps their owner), never into DIR
# itself; the CA key goes to DIR/../tls-ca-private, which no container
# mounts.
work="$(mktemp -d "$(dirname "$dir")/.make-certs.XXXXXX")"
trap 'rm -rf "$work"' EXIT
chmod 1777 "$work"
cert() {
    docker run --rm --user 65532:65532 --network none -v "$work:/tls" "$image" cert "$@"
}
cert ca --out /tls
for node in node1 node2 node3; do
    cert node --ca /tls --name "$node" --san "$node" --san localhost --san 127.0.0.1 --out /tls
done
private="$(dirname "$dir")/tls-ca-private"
mkdir -p "$private"
chmod 700 "$private"
mv "$work/ca-key.pem" "$private/"
mv "$work"/*.pem "$dir/"
echo "made a CA and certificates for node1..node3 in $dir (the CA key: $private/ca-key.pem)"

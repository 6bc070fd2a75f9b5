#!/usr/bin/env bash
# Builds the chitty container image from this checkout alone (FROM scratch:
# nothing is pulled). Usage:
#
#   cluster/docker/build-image.sh [--binary PATH] [--tag TAG]
#
# Without --binary it runs `cargo build --release --locked` and uses
# target/release/chitty. The default tag is chitty:latest.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
binary=""
tag="chitty:latest"
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --tag) tag="$2"; shift 2 ;;
        *) echo "usage: $0 [--binary PATH] [--tag TAG]" >&2; exit 2 ;;
    esac
done
for tool in docker ldd objcopy; do
    command -v "$tool" >/dev/null || { echo "error: $tool is needed to build the image" >&2; exit 1; }
done
if [ -z "$binary" ]; then
    (cd "$root" && cargo build --release --locked --bin chitty)
    binary="$root/target/release/chitty"
fi
[ -x "$binary" ] || { echo "error: $binary is not an executable" >&2; exit 1; }

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
rootfs="$context/rootfs"
mkdir -p "$rootfs/etc"
objcopy --strip-all "$binary" "$rootfs/chitty"
# The shared libraries the binary loads, at the paths it looks for them.
# glibc's own name service (files, then DNS) resolves compose service names.
ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r lib; do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done
printf 'hosts: files dns\n' > "$rootfs/etc/nsswitch.conf"
cp "$root/cluster/docker/Dockerfile" "$context/Dockerfile"
if ! docker build --quiet --tag "$tag" "$context" >"$context/build.log" 2>&1; then
    cat "$context/build.log" >&2
    exit 1
fi
size="$(docker image inspect --format '{{.Size}}' "$tag")"
echo "built $tag ($((size / 1000000)) MB)"

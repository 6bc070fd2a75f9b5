#!/usr/bin/env bash
# Checks cluster/systemd/chitty.service with `systemd-analyze verify`, with
# stand-ins for the binary and the files it names (in a temporary root, so
# nothing is installed). Usage: cluster/systemd/verify.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v systemd-analyze >/dev/null || { echo "error: systemd-analyze is needed (apt-get install systemd)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The unit names /usr/local/bin/chitty and /etc/chitty/*: verify a copy
# whose paths point into the temporary root.
mkdir -p "$work/bin" "$work/etc"
printf '#!/bin/sh\n' > "$work/bin/chitty"
chmod +x "$work/bin/chitty"
touch "$work/etc/chitty.env" "$work/etc/cluster-secret"
sed -e "s|/usr/local/bin/chitty|$work/bin/chitty|" -e "s|/etc/chitty/|$work/etc/|g" \
    "$here/chitty.service" > "$work/chitty.service"
out="$(systemd-analyze verify "$work/chitty.service" 2>&1 || true)"
# Messages about the host's own units are not about this file.
mine="$(printf '%s\n' "$out" | grep -F "chitty.service" || true)"
if [ -n "$mine" ]; then
    printf '%s\n' "$mine" >&2
    exit 1
fi
echo "chitty.service: systemd-analyze verify found nothing to report"

#!/usr/bin/env bash
# Validates cluster/k8s/*.yaml offline against the Kubernetes schemas (the
# kubernetes-validate package, which carries them), in a virtualenv under
# target/. Nothing is sent to a cluster. Usage: cluster/k8s/validate.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/k8s-validate"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 'kubernetes-validate==1.37.0'
fi
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.33 "$root"/cluster/k8s/*.yaml

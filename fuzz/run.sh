#!/bin/sh
# Runs every fuzz target for a bounded time: SECONDS_EACH seconds each
# (default 60), or only the targets named. Needs a nightly toolchain and
# cargo-fuzz (see README.md, "Security"):
#
#     rustup toolchain install nightly
#     cargo install cargo-fuzz --locked
#     fuzz/run.sh                        # 60 s per target
#     SECONDS_EACH=600 fuzz/run.sh node_core
#
# Builds without a sanitizer (`--sanitizer none`): the code fuzzed is safe
# Rust, and AddressSanitizer would only slow it down; overflow checks and
# debug assertions are on. Corpora are kept in fuzz/corpus/<target>, and an
# input that fails is saved in fuzz/artifacts/<target>; replay one with
# `cargo +nightly fuzz run --sanitizer none <target> <file>`.
set -eu
cd "$(dirname "$0")"
seconds=${SECONDS_EACH:-60}
targets=${*:-decode_requests validate node_core}
for target in $targets; do
    echo "== $target: ${seconds}s"
    cargo +nightly fuzz run --sanitizer none "$target" -- \
        -max_total_time="$seconds" -print_final_stats=1
done

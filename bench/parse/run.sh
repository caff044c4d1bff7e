#!/usr/bin/env bash
# Parse speed: every corpus Dockerfile (BuildKit's 33 cases, real-world,
# buildah-conformance) parsed and typed BENCH_ITERATIONS times (default 300)
# with a release build; prints the slowest files and the mean per file.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
export RBUILD_CORPUS="${RBUILD_CORPUS:-$root/testdata/corpus}"
lock() { if [ -e /work/cargo.lock ]; then flock /work/cargo.lock "$@"; else "$@"; fi; }
lock cargo test --release --no-run --test integration
cargo test -q --release --test integration parser_corpus::bench_parse -- --ignored --nocapture --test-threads=1

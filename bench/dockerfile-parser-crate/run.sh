#!/usr/bin/env bash
# Measures the dockerfile-parser crate on rbuild's corpora (see README.md).
# Builds under the shared cargo lock when /work/cargo.lock exists.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
shared="${RBUILD_CORPUS:-$root/testdata/corpus}"
lock() { if [ -e /work/cargo.lock ]; then flock /work/cargo.lock "$@"; else "$@"; fi; }

# rbuild's keyword sequences for the shared corpora: the oracle for "right".
tsv="$root/target/corpus-keywords.tsv"
(cd "$root" && lock cargo test --no-run --test integration >/dev/null 2>&1)
(cd "$root" && RBUILD_CORPUS="$shared" RBUILD_KEYWORDS_OUT="$tsv" \
  cargo test -q --test integration parser_corpus::write_keyword_sequences -- --ignored >/dev/null)

(cd "$here" && lock cargo build -q)
"$here/target/debug/dockerfile-parser-crate-bench" "$root/testdata/corpus" "$shared" "$tsv"

#!/usr/bin/env bash
# A CI runner's build with a registry cache (issue 11): the `big` scenario
# (busybox base, WORKDIR, `COPY tree .` of a bench/gen-tree.py tree, a RUN
# after it), built by rbuild, buildah and BuildKit side by side, each as a
# CI job would run it:
#   seed       an earlier job: empty store, build, export the cache, push
#   unchanged  a new job on a fresh runner: empty store, import the cache
#              the seed wrote, build the same context, push to the same
#              registry
#   one-file   the same after one file of the tree changed
# Per builder and job: wall seconds (build + push: what the CI step waits
# for) and what the registry sent (layer blobs, and everything), counted
# from the registry's access log. rbuild's one-file job is also compared
# with a local one-file rebuild in a warm store (target <= 1.3x): without
# any flags (local-1f), and as the same CI job, --cache-from and --push,
# on a runner that kept its store (local-1f-push). The ratios are printed.
#
# rbuild:   --cache-to type=registry,ref=REG/app:rcache,mode=max
#           --cache-from type=registry,ref=REG/app:rcache --push
# buildah:  bud --layers --cache-to REG/app-bcache --cache-from REG/app-bcache,
#           then buildah push (buildah 1.28: a registry repository per cache)
# BuildKit: dockerd 20.10, inline cache: docker build
#           --build-arg BUILDKIT_INLINE_CACHE=1 [--cache-from REG/app:k],
#           then docker push; each job starts a dockerd with an empty data root.
#
# Usage: bench/cache/run.sh [RBUILD_BIN]  (default: target/release/rbuild,
#        built). Env: FILES (20000), BINARY_MB (200), TEXT_MB (100),
#        BENCH_WORK (/tmp/rbuild-bench-cache), SKIP_RBUILD / SKIP_BUILDAH /
#        SKIP_BUILDKIT=1, CACHE_TO=1 (every job also exports its cache, as a
#        pipeline that updates the cache on every run does).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export BENCH_WORK=${BENCH_WORK:-/tmp/rbuild-bench-cache}
source "$repo/bench/lib.sh"
work=$BENCH_WORK
# Nothing is deleted while anything is measured (`trash` in bench/lib.sh:
# this VM's journal-less ext4 bills deletions to the next file creations);
# every job gets a store (or dockerd data root) of its own.
trash "$work"; mkdir -p "$work/ctx"
if [ -n "${1:-}" ]; then
  rbuild=$1
else
  (cd "$repo" && cargo build --release --quiet)
  rbuild="$repo/target/release/rbuild"
fi

big_context "$work/ctx"
changed_file=$(cd "$work/ctx/tree" && find . -type f -name '*.rs' | sort | sed -n 1p)

# The registry, with its access log on: each GET's status and bytes.
start_registry "$work/registry"
kill "$REGISTRY_PID"; wait "$REGISTRY_PID" 2>/dev/null || true
sed -i 's/^    disabled: true/    disabled: false/' "$work/registry/config.yml"
docker-registry serve "$work/registry/config.yml" >"$work/registry/log" 2>&1 &
REGISTRY_PID=$!
for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$REGISTRY_PORT") 2>/dev/null && break; sleep 0.1; done
reg="127.0.0.1:$REGISTRY_PORT"
cleanup() {
  stop_dockerd || true; kill "$REGISTRY_PID" 2>/dev/null || true
  local s # buildah's stores hold mounts until its rmi
  for s in "$work"/bh-*; do
    [ -d "$s" ] && buildah --root "$s/root" --runroot "$s/run" --storage-driver overlay rmi --all --force >/dev/null 2>&1
  done
  [ "${KEEP:-}" = 1 ] || { trash "$work"; empty_trash; }
}
trap cleanup EXIT

log_mark() { wc -l < "$work/registry/log"; }
# Bytes the registry sent since line $1 of its log: "LAYER_BYTES ALL_BYTES"
# (layer blobs: GETs of blobs other than small JSON ones under 64 KiB would
# be configs; every blob GET over 64 KiB is counted as a layer).
sent_since() {
  tail -n +"$(($1 + 1))" "$work/registry/log" | python3 -c '
import re, sys
layers = total = 0
for line in sys.stdin:
    m = re.search(r"\"(GET|HEAD) (\S+) HTTP/[0-9.]+\" (\d+) (\d+|-)", line)
    if not m or m.group(1) != "GET" or m.group(4) == "-":
        continue
    n = int(m.group(4))
    total += n
    if "/blobs/" in m.group(2) and n > 65536:
        layers += n
print(layers, total)'
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }
mb() { awk -v b="$1" 'BEGIN{printf "%.2f", b/1048576}'; }

results=()
# Record one job: builder, job, seconds, registry-sent bytes since mark.
record() {
  local sent; sent=$(sent_since "$4")
  results+=("$(printf '%-10s %-10s %8s %12s %12s' "$1" "$2" "$3" "$(mb "${sent% *}")" "$(mb "${sent#* }")")")
  printf '%s\n' "${results[-1]}"
}
cp "$work/ctx/tree/$changed_file" "$work/orig-file"
change_one() { printf '\n// changed\n' >> "$work/ctx/tree/$changed_file"; }
restore_one() { cp "$work/orig-file" "$work/ctx/tree/$changed_file"; }

settle
printf 'load before: %s   fs canary: %s ms\n' "$(cut -d' ' -f1-3 /proc/loadavg)" "$SETTLED_MS"
printf '%-10s %-10s %8s %12s %12s\n' builder job "secs" "layers MB" "all MB"

# rbuild ------------------------------------------------------------------
if [ "${SKIP_RBUILD:-}" != 1 ]; then
  if "$rbuild" build --help 2>/dev/null | grep -q -- '--cache-from'; then
    cache="type=registry,ref=$reg/app:rcache"
    rb() { "$rbuild" --root "$1" build --progress plain "${@:2}" "$work/ctx" >"$work/rb.log" 2>&1 \
           || { tail -30 "$work/rb.log" >&2; return 1; }; }
    to=(); [ "${CACHE_TO:-}" = 1 ] && to=(--cache-to "$cache,mode=max")
    m=$(log_mark); t=$(now)
    rb "$work/rb-seed" --cache-to "$cache,mode=max" --push -t "$reg/app:r"
    record rbuild seed "$(elapsed "$t")" "$m"
    m=$(log_mark); t=$(now)
    rb "$work/rb-ci-unchanged" --cache-from "$cache" "${to[@]}" --push -t "$reg/app:r"
    record rbuild unchanged "$(elapsed "$t")" "$m"
    cp "$work/rb.log" "$work/rb-unchanged.log"
    change_one
    m=$(log_mark); t=$(now)
    rb "$work/rb-ci-one-file" --cache-from "$cache" "${to[@]}" --push -t "$reg/app:r"
    record rbuild one-file "$(elapsed "$t")" "$m"
    cp "$work/rb.log" "$work/rb-one-file.log"
    # The local references: the seed's warm store, the same one-file
    # change; first a plain rebuild (no cache flags, no push), then the
    # same CI job as one-file (--cache-from, --push) on a runner that kept
    # its store.
    restore_one; rb "$work/rb-seed" -t app:local
    change_one; t=$(now)
    rb "$work/rb-seed" -t app:local
    record rbuild local-1f "$(elapsed "$t")" "$(log_mark)"
    cp "$work/rb.log" "$work/rb-local-1f.log"
    # Another change than one-file's, so neither this store nor the
    # registry has its layer: the job writes and uploads it.
    restore_one; printf '\n// changed again\n' >> "$work/ctx/tree/$changed_file"
    m=$(log_mark); t=$(now)
    rb "$work/rb-seed" --cache-from "$cache" "${to[@]}" --push -t "$reg/app:r"
    record rbuild local-1f-push "$(elapsed "$t")" "$m"
    cp "$work/rb.log" "$work/rb-local-1f-push.log"
    restore_one
  else
    echo "rbuild: not measured ($rbuild has no --cache-from)" >&2
  fi
fi

# buildah -----------------------------------------------------------------
if [ "${SKIP_BUILDAH:-}" != 1 ] && command -v buildah >/dev/null; then
  bcache="$reg/app-bcache"
  bh() { # $1 store dir, rest: bud args
    local s=$1; shift
    local f=(--root "$s/root" --runroot "$s/run" --storage-driver overlay)
    buildah "${f[@]}" bud --layers --tls-verify=false "$@" -t "$reg/app:b" "$work/ctx" \
      >"$work/bh.log" 2>&1 || { tail -30 "$work/bh.log" >&2; return 1; }
    buildah "${f[@]}" push --tls-verify=false "$reg/app:b" >>"$work/bh.log" 2>&1 \
      || { tail -30 "$work/bh.log" >&2; return 1; }
  }
  to=(); [ "${CACHE_TO:-}" = 1 ] && to=(--cache-to "$bcache")
  restore_one; m=$(log_mark); t=$(now)
  bh "$work/bh-seed" --cache-to "$bcache"
  record buildah seed "$(elapsed "$t")" "$m"
  m=$(log_mark); t=$(now)
  bh "$work/bh-ci-unchanged" --cache-from "$bcache" "${to[@]}"
  record buildah unchanged "$(elapsed "$t")" "$m"
  change_one; m=$(log_mark); t=$(now)
  bh "$work/bh-ci-one-file" --cache-from "$bcache" "${to[@]}"
  record buildah one-file "$(elapsed "$t")" "$m"
  restore_one
fi

# BuildKit ----------------------------------------------------------------
if [ "${SKIP_BUILDKIT:-}" != 1 ]; then
  kb_n=0
  kb() { # a fresh dockerd per job, as a fresh runner; rest: build args
    kb_n=$((kb_n + 1))
    start_dockerd "$work/dockerd-$kb_n" "\"$reg\"" || { echo "BuildKit: dockerd unavailable" >&2; return 1; }
    local t0; t0=$(now)
    /usr/bin/docker build --network host --build-arg BUILDKIT_INLINE_CACHE=1 "$@" \
      -t "$reg/app:k" "$work/ctx" >"$work/kb.log" 2>&1 || { tail -30 "$work/kb.log" >&2; return 1; }
    /usr/bin/docker push "$reg/app:k" >>"$work/kb.log" 2>&1 || { tail -30 "$work/kb.log" >&2; return 1; }
    KB_SECS=$(elapsed "$t0")
    stop_dockerd
  }
  restore_one; m=$(log_mark)
  if kb; then
    record BuildKit seed "$KB_SECS" "$m"
    m=$(log_mark); kb --cache-from "$reg/app:k" && record BuildKit unchanged "$KB_SECS" "$m"
    change_one; m=$(log_mark)
    kb --cache-from "$reg/app:k" && record BuildKit one-file "$KB_SECS" "$m"
    restore_one
  fi
fi
ratio() { # job reference: one-file seconds / reference seconds
  local a b
  a=$(printf '%s\n' "${results[@]}" | awk -v j="$1" '$1=="rbuild" && $2==j {print $3}')
  b=$(printf '%s\n' "${results[@]}" | awk -v j="$2" '$1=="rbuild" && $2==j {print $3}')
  [ -n "$a" ] && [ -n "$b" ] && awk -v a="$a" -v b="$b" -v r="$2" \
    'BEGIN{printf "rbuild one-file / %s: %.2fx\n", r, a/b}'
}
if [ "${SKIP_RBUILD:-}" != 1 ]; then ratio one-file local-1f || true; ratio one-file local-1f-push || true; fi
printf 'load after: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# Registry benchmark (issue: registries). Builds a ~300 MB image (FROM
# scratch, COPY of incompressible files and source-like text), then pushes it
# to a fresh local docker-registry with rbuild and with `skopeo copy
# oci:STORE:tag docker://…` (each into its own fresh registry, so neither
# finds the other's blobs), and pulls it back into an empty store with rbuild
# and with `skopeo copy docker://… oci:DIR`.
# Usage: bench/push/run.sh [WORKDIR]   (default /tmp/rbuild-bench-push)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export BENCH_WORK=${1:-/tmp/rbuild-bench-push}
source "$repo/bench/lib.sh"
rm -rf "$BENCH_WORK"; mkdir -p "$BENCH_WORK"
(cd "$repo" && cargo build --release --quiet)
rbuild="$repo/target/release/rbuild"

ctx="$BENCH_WORK/ctx"
python3 "$repo/bench/gen-tree.py" "$ctx" --files 3000 --binary-mb 250 --text-mb 50
printf 'FROM scratch\nCOPY assets /assets\nCOPY src /src\n' > "$ctx/Dockerfile"
store="$BENCH_WORK/store"
"$rbuild" --root "$store" build --progress plain -t bench:1 "$ctx" >/dev/null 2>&1
size=$(du -sm "$store/blobs" | cut -f1)

regs=()
cleanup() { for p in "${regs[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
start_registry "$BENCH_WORK/reg1"; p1=$REGISTRY_PORT; regs+=("$REGISTRY_PID")
start_registry "$BENCH_WORK/reg2"; p2=$REGISTRY_PORT; regs+=("$REGISTRY_PID")

rpush=$(measure "$rbuild" --root "$store" push bench:1 "127.0.0.1:$p1/bench/app:1")
spush=$(measure skopeo copy --dest-tls-verify=false "oci:$store:bench:1" "docker://127.0.0.1:$p2/bench/app:1")
rpull=$(measure "$rbuild" --root "$BENCH_WORK/pulled" pull "127.0.0.1:$p1/bench/app:1")
spull=$(measure skopeo copy --src-tls-verify=false "docker://127.0.0.1:$p2/bench/app:1" "oci:$BENCH_WORK/skopeo-oci:app")
again=$(measure "$rbuild" --root "$store" push bench:1 "127.0.0.1:$p1/bench/app:1")

printf '\nimage: %s MB of blobs in the store\n\n' "$size"
printf '%-40s %8s %8s %s\n' "what" "seconds" "peakMB" "ratio"
printf '%-40s %8s %8s %s\n' "rbuild push" "$(secs "$rpush")" "$(rss "$rpush")" "$(ratio "$(secs "$rpush")" "$(secs "$spush")")x skopeo (target <= 1.0)"
printf '%-40s %8s %8s\n' "skopeo copy oci: → docker://" "$(secs "$spush")" "$(rss "$spush")"
printf '%-40s %8s %8s %s\n' "rbuild pull into an empty store" "$(secs "$rpull")" "$(rss "$rpull")" "$(ratio "$(secs "$rpull")" "$(secs "$spull")")x skopeo"
printf '%-40s %8s %8s\n' "skopeo copy docker:// → oci:" "$(secs "$spull")" "$(rss "$spull")"
printf '%-40s %8s %8s\n' "rbuild push again (nothing to upload)" "$(secs "$again")" "$(rss "$again")"

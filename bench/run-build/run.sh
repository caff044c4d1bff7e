#!/usr/bin/env bash
# RUN-step benchmark (issue: RUN steps in a namespaced sandbox). The same
# Dockerfile — a busybox base built FROM scratch, then N trivial RUN steps —
# built with --no-cache by rbuild, `buildah bud` and BuildKit (a dockerd
# started for the run). Per-step cost = (time with N RUNs - time with 0 RUNs) / N,
# so the base and the image export are left out of the figure.
# Usage: bench/run-build/run.sh [STEPS] [WORKDIR]   (default 20, /tmp/rbuild-bench-run)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
steps=${1:-20}
export BENCH_WORK=${2:-/tmp/rbuild-bench-run}
source "$repo/bench/lib.sh"
rm -rf "$BENCH_WORK"; mkdir -p "$BENCH_WORK"
(cd "$repo" && cargo build --release --quiet)
rbuild="$repo/target/release/rbuild"

make_ctx() { # $1 dir, $2 number of RUN steps
  mkdir -p "$1"; cp /bin/busybox "$1/busybox"
  {
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
    for i in $(seq 1 "$2"); do printf 'RUN echo %s > /f%s\n' "$i" "$i"; done
  } > "$1/Dockerfile"
}
make_ctx "$BENCH_WORK/ctx0" 0
make_ctx "$BENCH_WORK/ctxN" "$steps"

per_step() { awk -v a="$1" -v b="$2" -v n="$steps" 'BEGIN{printf "%.3f", (a-b)/n}'; }
# Each figure is the mean of RUNS builds (hyperfine), not one sample.
export RUNS=${RUNS:-5}

r0=$(mean_secs "$rbuild" --root "$BENCH_WORK/rb" build --no-cache --progress plain -t b:0 "$BENCH_WORK/ctx0")
rN=$(mean_secs "$rbuild" --root "$BENCH_WORK/rb" build --no-cache --progress plain -t b:n "$BENCH_WORK/ctxN")
rstep=$(per_step "$rN" "$r0")
printf '\nmean of %s builds each, --no-cache\n%-34s %9s %9s %10s\n' "$RUNS" "builder" "0 RUNs s" "$steps RUNs s" "s/step"
printf '%-34s %9s %9s %10s\n' "rbuild" "$r0" "$rN" "$rstep"

if command -v buildah >/dev/null && [ "${SKIP_BUILDAH:-}" != 1 ]; then
  bflags=(--root "$BENCH_WORK/buildah/root" --runroot "$BENCH_WORK/buildah/run" --storage-driver overlay)
  b0=$(mean_secs buildah "${bflags[@]}" bud --no-cache --layers -t b:0 "$BENCH_WORK/ctx0")
  bN=$(mean_secs buildah "${bflags[@]}" bud --no-cache --layers -t b:n "$BENCH_WORK/ctxN")
  bstep=$(per_step "$bN" "$b0")
  printf '%-34s %9s %9s %10s  (rbuild %sx faster)\n' "buildah bud" "$b0" "$bN" "$bstep" "$(ratio "$bstep" "$rstep")"
  buildah "${bflags[@]}" rm --all >/dev/null 2>&1 || true
fi

if [ "${SKIP_BUILDKIT:-}" != 1 ] && start_dockerd "$BENCH_WORK/dockerd"; then
  trap stop_dockerd EXIT
  k0=$(mean_secs /usr/bin/docker build --no-cache --network host -t b:0 "$BENCH_WORK/ctx0")
  kN=$(mean_secs /usr/bin/docker build --no-cache --network host -t b:n "$BENCH_WORK/ctxN")
  kstep=$(per_step "$kN" "$k0")
  printf '%-34s %9s %9s %10s  (rbuild/BuildKit = %s, target <= 0.5)\n' "BuildKit (dockerd 20.10)" "$k0" "$kN" "$kstep" "$(ratio "$rstep" "$kstep")"
  stop_dockerd; trap - EXIT
else
  echo "BuildKit: not measured (dockerd unavailable)" >&2
fi

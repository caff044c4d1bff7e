#!/usr/bin/env bash
# RUN over layer snapshots (issue 13): the `big` scenario's shape — a busybox
# base, WORKDIR, `COPY . .` of a generated tree, then a RUN — built by one or
# more rbuild binaries side by side. Per binary, median of RUNS builds:
#   cold          first build into an empty store
#   run-only      rebuild with only the last RUN's cache busted (ARG BUST):
#                 the RUN after the big COPY, plus the fixed cost of a build
#   one-file      rebuild after one source file changed (COPY + RUN again)
# and the RUN step's own time in ms (JSON progress). RUN_CMD replaces the
# RUN's command (default `find . | wc -l`; `true` shows the step's overhead).
# Usage: bench/snapshots/run.sh RBUILD_BIN... (env: FILES, BINARY_MB, TEXT_MB,
#        RUNS, RUN_CMD, BENCH_WORK)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=${BENCH_WORK:-/tmp/rbuild-bench-snap}
runs=${RUNS:-3}
rm -rf "$work"; mkdir -p "$work/ctx"
python3 "$repo/bench/gen-tree.py" "$work/ctx/tree" --files "${FILES:-20000}" \
  --binary-mb "${BINARY_MB:-200}" --text-mb "${TEXT_MB:-100}" >/dev/null
cp /bin/busybox "$work/ctx/busybox"
cat > "$work/ctx/Dockerfile" <<'DF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
WORKDIR /app
COPY tree .
ARG BUST
RUN echo "$BUST" >/dev/null && RUN_CMD
DF
sed -i "s#RUN_CMD#${RUN_CMD:-find . | wc -l}#" "$work/ctx/Dockerfile"
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
now() { date +%s.%N; }
# Wall seconds of one build and its last RUN step's own milliseconds (from
# the JSON progress events), as "wall run_ms".
one() { # $1 bin, $2 store, $3 bust
  local t0 t1 log id run
  t0=$(now)
  log=$("$1" --root "$2" build --progress json --build-arg "BUST=$3" -t b "$work/ctx" 2>&1)
  t1=$(now)
  id=$(grep '"step_started"' <<<"$log" | grep '] RUN' | tail -1 | sed -E 's/.*"id":([0-9]+).*/\1/')
  run=$(grep '"step_done"' <<<"$log" | grep "\"id\":$id," | sed -E 's/.*"duration_ms":([0-9]+).*/\1/')
  awk -v a="$t0" -v b="$t1" -v r="${run:-0}" 'BEGIN{printf "%.3f %s\n", b-a, r}'
}
printf 'load before: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-28s %8s %10s %10s %10s %10s\n' binary "cold s" "run-only s" "RUN ms" "one-file s" "RUN ms"
for bin in "$@"; do
  cold=(); ronly=(); rstep=(); ofile=(); ostep=()
  for i in $(seq 1 "$runs"); do
    store="$work/store-$i"; rm -rf "$store"
    r=$(one "$bin" "$store" "c$i"); cold+=("${r% *}")
    r=$(one "$bin" "$store" "r$i"); ronly+=("${r% *}"); rstep+=("${r#* }")
    echo "changed $i" > "$work/ctx/tree/changed.txt"
    r=$(one "$bin" "$store" "r$i"); ofile+=("${r% *}"); ostep+=("${r#* }")
    rm -rf "$store"
  done
  m() { printf '%s\n' "$@" | median; }
  printf '%-28s %8s %10s %10s %10s %10s\n' "$(basename "$bin")" "$(m "${cold[@]}")" \
    "$(m "${ronly[@]}")" "$(m "${rstep[@]}")" "$(m "${ofile[@]}")" "$(m "${ostep[@]}")"
done
printf 'load after: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"

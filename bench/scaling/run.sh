#!/usr/bin/env bash
# How rbuild's cost grows with the work (issue 13):
#  1. no-op and one-file-changed rebuilds of the `big` Dockerfile's shape
#     (busybox base, WORKDIR, COPY tree ., RUN find | wc -l) at 2k, 20k and
#     200k files (text files of ~5 KB on average: 10 MB, 100 MB, 1 GB), as
#     seconds and as microseconds per file (flat is the goal);
#  2. the cost of a RUN step (`RUN true`, cache busted by an ARG) on a base of
#     5, 50 and 120 layers (made by rbuild itself: COPY busybox, RUN install,
#     then RUN steps that each add one file), as wall seconds of the rebuild
#     and the step's own milliseconds (JSON progress).
# Medians of ROUNDS (default 3) builds. The 200k tree is skipped, with a note,
# when the disk has less than 15 GB free.
# Usage: bench/scaling/run.sh   (env: ROUNDS, SIZES="2000 20000 200000",
#   LAYERS="5 50 120", KB_PER_FILE=5, RBUILD=path, BENCH_WORK=dir, KEEP=1)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export BENCH_WORK=${BENCH_WORK:-/var/tmp/rbuild-bench-scaling}
source "$repo/bench/lib.sh"
rounds=${ROUNDS:-3}
work=$BENCH_WORK
rm -rf "$work"; mkdir -p "$work"
: > "$work/rows"
rbuild=${RBUILD:-$repo/target/release/rbuild}
if [ -z "${RBUILD:-}" ]; then
  (cd "$repo" && nice -n 15 cargo build --release --quiet)
fi

base='FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]'
run_ms() {
  local id
  id=$(grep '"step_started"' "$1" | grep '] RUN' | tail -1 | sed -E 's/.*"id":([0-9]+).*/\1/')
  grep '"step_done"' "$1" | grep "\"id\":$id," | sed -E 's/.*"duration_ms":([0-9]+).*/\1/'
}
load_before=$(load)
echo "load before: $load_before" >&2

# --- 1. rebuilds against the number of files --------------------------------
sizes=()
for n in ${SIZES:-2000 20000 200000}; do
  free_gb=$(df -BG --output=avail "$work" | tail -1 | tr -dc 0-9)
  if [ "$n" -ge 100000 ] && [ "$free_gb" -lt 15 ]; then
    echo "note: $n files skipped: only ${free_gb} GB free (need 15)" | tee -a "$work/notes" >&2
    continue
  fi
  sizes+=("$n")
  ctx=$work/ctx$n; mkdir -p "$ctx"
  echo "== $n files: generating (load $(load))" >&2
  python3 "$repo/bench/gen-tree.py" "$ctx/tree" --files "$n" --binary-mb 0 \
    --text-mb $(( n * ${KB_PER_FILE:-5} / 1024 )) >/dev/null
  cp /bin/busybox "$ctx/busybox"
  printf '%s\nWORKDIR /app\nCOPY tree .\nRUN find . -type f | wc -l > /files.count\n' "$base" > "$ctx/Dockerfile"
  tar -C "$ctx/tree" -cf - . | cat > /dev/null
  victim=$ctx/tree/src/m00/s00/file00000.rs
  cp "$victim" "$work/victim.bak"
  st=$work/store$n; rm -rf "$st"
  record "cold_$n" "$rbuild" --root "$st" build --progress plain -t s "$ctx"
  for r in $(seq "$rounds"); do
    record "noop_$n" "$rbuild" --root "$st" build --progress plain -t s "$ctx"
    echo "// changed $r" >> "$victim"
    record "one_$n" "$rbuild" --root "$st" build --progress plain -t s "$ctx"
  done
  echo "$n $(du -sb "$ctx/tree" | cut -f1)" >> "$work/sizes"
  rm -rf "$st" "$ctx"
done

# --- 2. RUN cost against the number of base layers ----------------------------
for l in ${LAYERS:-5 50 120}; do
  ctx=$work/layers$l; mkdir -p "$ctx"; cp /bin/busybox "$ctx/busybox"
  # COPY + RUN install are two layers; each further RUN adds one.
  { echo "$base"; for i in $(seq 3 "$l"); do echo "RUN echo $i > /layer$i"; done
    printf 'ARG BUST\nRUN true\n'; } > "$ctx/Dockerfile"
  st=$work/lstore$l; rm -rf "$st"
  echo "== $l-layer base (load $(load))" >&2
  record "lbase_$l" "$rbuild" --root "$st" build --progress plain --build-arg BUST=0 -t l "$ctx"
  for r in $(seq "$rounds"); do
    record "lrun_$l" "$rbuild" --root "$st" build --progress json --build-arg "BUST=$r" -t l "$ctx"
    run_ms "$work/lrun_$l.log" | sed "s/^/lrunms_$l /; s/\$/ 0 0/" >> "$work/rows"
  done
  layers=$("$rbuild" --root "$st" inspect l | python3 -c '
import json, sys
def find(d):
    if isinstance(d, dict):
        if "diff_ids" in d: return len(d["diff_ids"])
        d = list(d.values())
    if isinstance(d, list):
        for v in d:
            n = find(v)
            if n is not None: return n
print(find(json.load(sys.stdin)))' || echo "?")
  echo "$l $layers" >> "$work/layercount"
  rm -rf "$st" "$ctx"
done
load_after=$(load)

# --- tables ----------------------------------------------------------------------
us_per_file() { awk -v s="$1" -v n="$2" 'BEGIN{ if (s == "-") print "-"; else printf "%.1f", s * 1e6 / n }'; }
printf '\nload average before: %s   after: %s   (%s CPUs); medians of %s\n\n' "$load_before" "$load_after" "$(nproc)" "$rounds"
echo '| files | tree MB | cold s | no-op s | no-op µs/file | one file s | one file µs/file | peak RSS MB |'
echo '|---|---|---|---|---|---|---|---|'
for n in "${sizes[@]}"; do
  bytes=$(awk -v n="$n" '$1 == n {print $2}' "$work/sizes")
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$n" "$((bytes / 1024 / 1024))" "$(med "cold_$n")" \
    "$(med "noop_$n")" "$(us_per_file "$(med "noop_$n")" "$n")" "$(med "one_$n")" \
    "$(us_per_file "$(med "one_$n")" "$n")" "$(awk -v n="$n" '$1 ~ "_"n"$" && $4 > m {m=$4} END{print m+0}' "$work/rows")"
done
[ -f "$work/notes" ] && cat "$work/notes"
echo
echo '| base layers (image incl. the RUN true layer) | cold build of the base s | RUN rebuild s (wall / CPU) | its RUN step ms |'
echo '|---|---|---|---|'
for l in ${LAYERS:-5 50 120}; do
  printf '| %s (%s) | %s | %s / %s | %s |\n' "$l" "$(awk -v l="$l" '$1 == l {print $2}' "$work/layercount")" \
    "$(med "lbase_$l")" "$(med "lrun_$l")" "$(med "lrun_$l" 3)" "$(med "lrunms_$l")"
done
[ "${KEEP:-}" = 1 ] || rm -rf "$work"

#!/usr/bin/env bash
# One-file rebuild A/B (issue 13): bench/peers' `big` scenario (busybox base,
# WORKDIR /app, COPY tree . of a generated 20,000-file / 300 MB tree, RUN
# find | wc -l, metadata), each binary with a store of its own warmed by a
# cold build and one rebuild; then ROUNDS rounds that append a line to
# tree/src/m00/s00/file00000.rs (as bench/peers does) and rebuild with each
# binary in turn, alternating. Prints per build: name, wall s, user s, sys s,
# peak RSS KB, load, the COPY and RUN steps' seconds; then the medians of wall and user+sys per binary.
# Usage: bench/onefile/run.sh NAME=BIN [NAME=BIN...]  (env: ROUNDS=5,
#   BENCH_WORK=/var/tmp/rbuild-bench-onefile, KEEP=1 keeps the stores)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
w=${BENCH_WORK:-/var/tmp/rbuild-bench-onefile}
rounds=${ROUNDS:-5}
rm -rf "$w"; mkdir -p "$w/ctx"
python3 "$repo/bench/gen-tree.py" "$w/ctx/tree" --files 20000 --binary-mb 200 --text-mb 100 >/dev/null
cp /bin/busybox "$w/ctx/busybox"
cat > "$w/ctx/Dockerfile" <<'DF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
WORKDIR /app
COPY tree .
RUN find . -type f | wc -l > /files.count
ENV APP_MODE=bench
LABEL org.opencontainers.image.title=big
EXPOSE 8080
CMD ["sh", "-c", "cat /files.count"]
DF
victim=$w/ctx/tree/src/m00/s00/file00000.rs
build() { # name bin -> one row
  /usr/bin/time -f "$1 %e %U %S %M" -o "$w/time.out" "$2" --root "$w/store-$1" \
    build --progress plain -t big "$w/ctx" > "$w/last-$1.log" 2>&1
  # The COPY tree and RUN steps' own seconds (#5 and #6 of this Dockerfile).
  steps=$(grep -h "^#[56] DONE" "$w/last-$1.log" | awk '{printf "%s ", $3}')
  echo "$(cat "$w/time.out") load $(cut -d' ' -f1 /proc/loadavg) copy,run $steps"
}
for nb in "$@"; do
  n=${nb%%=*}; b=${nb#*=}
  "$b" --root "$w/store-$n" build --progress plain -t big "$w/ctx" >/dev/null 2>&1
  echo "// warm $n" >> "$victim"
  build "$n" "$b" >/dev/null
done
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$rounds"); do
  for nb in "$@"; do
    n=${nb%%=*}; b=${nb#*=}
    echo "// changed $n $r $(date +%s%N)" >> "$victim"
    build "$n" "$b"
  done
done | tee "$w/rows"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
for nb in "$@"; do
  n=${nb%%=*}
  printf '%-12s wall %s s  cpu %s s (median of %s)\n' "$n" \
    "$(awk -v n="$n" '$1==n{print $2}' "$w/rows" | median)" \
    "$(awk -v n="$n" '$1==n{print $3+$4}' "$w/rows" | median)" "$rounds"
done
grep -h "layer chunks" "$w"/last-*.log || true
[ "${KEEP:-}" = 1 ] || rm -rf "$w"/store-*

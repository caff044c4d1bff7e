#!/usr/bin/env bash
# Issue 13's side-by-side benchmark, in ONE run: the `big` scenario (a
# generated 20,000-file / ~300 MB tree; busybox base, WORKDIR, COPY . ., RUN
# find | wc -l, metadata) built cold, as a no-op rebuild and after one file
# changed, plus 20 RUN steps with --no-cache, by rbuild (release), BuildKit
# (a dockerd started for the run) and buildah (bud --layers, overlay), with
# `tar | pigz -p 2` and `tar | zstd -T2` as the physical references. Prints
# the medians of ROUNDS rounds (wall and CPU seconds, peak RSS) and one table
# of the issue's targets as ratios with PASS/MISS.
# Usage: bench/peers/run.sh   (env: ROUNDS=3, NOOP_RUNS=10, FILES=20000,
#   BH_NOOP_RUNS=2 (buildah's no-op takes seconds), BINARY_MB=200, TEXT_MB=100, STEPS=20, RBUILD=path, BENCH_WORK=dir,
#   SKIP_BUILDKIT=1, SKIP_BUILDAH=1, KEEP=1 keeps the work dir)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export BENCH_WORK=${BENCH_WORK:-/var/tmp/rbuild-bench-peers}
source "$repo/bench/lib.sh"
rounds=${ROUNDS:-3}
noop_runs=${NOOP_RUNS:-10}
steps=${STEPS:-20}
work=$BENCH_WORK
# Nothing is deleted while anything is measured (see `trash` in lib.sh):
# an earlier run's work dir, and every store, go to the trash, emptied at
# the end.
trash "$work"; mkdir -p "$work"
: > "$work/rows"

rbuild=${RBUILD:-$repo/target/release/rbuild}
if [ -z "${RBUILD:-}" ]; then
  echo "building rbuild (release)…" >&2
  (cd "$repo" && nice -n 15 cargo build --release --quiet)
fi
echo "rbuild: $("$rbuild" version 2>/dev/null | head -1)" >&2

# --- contexts ---------------------------------------------------------------
ctx=$work/ctx
mkdir -p "$ctx"
python3 "$repo/bench/gen-tree.py" "$ctx/tree" --files "${FILES:-20000}" \
  --binary-mb "${BINARY_MB:-200}" --text-mb "${TEXT_MB:-100}" >/dev/null
cp /bin/busybox "$ctx/busybox"
# The busybox base is built in the Dockerfile itself (no registry needed),
# the same way for every builder.
base='FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]'
cat > "$ctx/Dockerfile" <<DF
$base
WORKDIR /app
COPY tree .
RUN find . -type f | wc -l > /files.count
ENV APP_MODE=bench
LABEL org.opencontainers.image.title=big
EXPOSE 8080
CMD ["sh", "-c", "cat /files.count"]
DF
# The RUN after the big COPY with a command that does nothing: its step time
# (from rbuild's JSON progress) is the step's own cost.
cat > "$ctx/Dockerfile.runtrue" <<DF
$base
WORKDIR /app
COPY tree .
ARG BUST
RUN true
DF
victim=$ctx/tree/src/m00/s00/file00000.rs
cp "$victim" "$work/victim.bak"
change() { echo "// changed $1 $(date +%s%N)" >> "$victim"; }
restore() { cp "$work/victim.bak" "$victim"; }
for n in 0 "$steps"; do
  d=$work/steps$n; mkdir -p "$d"; cp /bin/busybox "$d/busybox"
  { echo "$base"; for i in $(seq 1 "$n"); do echo "RUN echo $i > /f$i"; done; } > "$d/Dockerfile"
done
files=$(find "$ctx/tree" -type f | wc -l)
mb=$(( $(du -sb "$ctx/tree" | cut -f1) / 1024 / 1024 ))
# Warm the page cache for everyone (through cat: GNU tar skips /dev/null).
tar -C "$ctx/tree" -cf - . | cat > /dev/null

# The RUN step's own milliseconds from a JSON progress log: the last RUN.
run_ms() {
  local id
  id=$(grep '"step_started"' "$1" | grep '] RUN' | tail -1 | sed -E 's/.*"id":([0-9]+).*/\1/')
  grep '"step_done"' "$1" | grep "\"id\":$id," | sed -E 's/.*"duration_ms":([0-9]+).*/\1/'
}

settle
canary_before=$SETTLED_MS
load_before=$(load)
echo "load before: $load_before" >&2

# --- references and rbuild -------------------------------------------------
for r in $(seq "$rounds"); do
  echo "== round $r (load $(load))" >&2
  record pigz sh -c "tar -C '$ctx/tree' -cf - . | pigz -p 2 -6 > /dev/null"
  record zstd sh -c "tar -C '$ctx/tree' -cf - . | zstd -q -T2 -3 > /dev/null"
  # What any builder must do at least for the cold zstd build, by hand: the
  # two digests (diff_id, blob digest), the compressed blob written to disk,
  # and the files the RUN after the COPY sees (a copy of the tree).
  record zstd_floor bash -c "tar -C '$ctx/tree' -cf - . | tee >(sha256sum >/dev/null) \
    | zstd -q -T2 -3 | tee >(sha256sum >/dev/null) > '$work/floor-r$r.zst' && cp -a '$ctx/tree' '$work/floor-r$r'"
  # A new store per round: the cold builds need an empty one, and the last
  # round's stays until the end (trash, not rm: see the top).
  st=$work/rb-r$r
  record rb_cold "$rbuild" --root "$st" build --progress plain -t big "$ctx"
  record rb_cold_zstd "$rbuild" --root "$st-z" build --compression zstd --progress plain -t big "$ctx"
  for _ in $(seq "$noop_runs"); do record rb_noop "$rbuild" --root "$st" build --progress plain -t big "$ctx"; done
  change "rb$r"
  record rb_one "$rbuild" --root "$st" build --progress json -t big "$ctx"
  run_ms "$work/rb_one.log" | sed 's/^/rb_one_run_ms /; s/$/ 0 0/' >> "$work/rows"
  restore
  record rb_runtrue_a "$rbuild" --root "$st" build --progress json --build-arg BUST="a$r" -f "$ctx/Dockerfile.runtrue" -t rt "$ctx"
  record rb_runtrue "$rbuild" --root "$st" build --progress json --build-arg BUST="b$r" -f "$ctx/Dockerfile.runtrue" -t rt "$ctx"
  run_ms "$work/rb_runtrue.log" | sed 's/^/rb_runtrue_ms /; s/$/ 0 0/' >> "$work/rows"
  for n in 0 "$steps"; do
    record "rb_steps$n" "$rbuild" --root "$work/rbs-r$r" build --no-cache --progress plain -t s "$work/steps$n"
  done
done

# --- BuildKit ------------------------------------------------------------------
# A new dockerd data root per round instead of `docker builder prune`, so
# BuildKit's cold build is not billed for deleting the last round's files.
bk_round() { # ROUND: starts dockerd on a fresh data root
  start_dockerd "$work/dockerd-r$1" || return 1
  # dockerd and its containerd: their CPU is the build's CPU.
  cg_adopt $(tree_pids "$DOCKERD_PID")
}
if [ "${SKIP_BUILDKIT:-}" != 1 ] && bk_round 1; then
  trap 'stop_dockerd; cg_drop' EXIT
  D=(/usr/bin/docker build --network host)
  for r in $(seq "$rounds"); do
    if [ "$r" -gt 1 ]; then stop_dockerd; cg_drop; bk_round "$r"; fi
    echo "== BuildKit round $r (load $(load))" >&2
    record bk_cold "${D[@]}" -t big "$ctx"
    for _ in $(seq "$noop_runs"); do record bk_noop "${D[@]}" -t big "$ctx"; done
    change "bk$r"; record bk_one "${D[@]}" -t big "$ctx"; restore
    for n in 0 "$steps"; do record "bk_steps$n" "${D[@]}" --no-cache -t s "$work/steps$n"; done
  done
  stop_dockerd; cg_drop; trap - EXIT
else
  echo "BuildKit: not measured" >&2
fi

# --- buildah -------------------------------------------------------------------
if [ "${SKIP_BUILDAH:-}" != 1 ] && command -v buildah >/dev/null; then
  # A new root per round (as for rbuild and BuildKit), all removed at the end.
  bh_roots() { B=(buildah --root "$work/buildah-r$1/root" --runroot "$work/buildah-r$1/run" --storage-driver overlay); }
  for r in $(seq "$rounds"); do
    bh_roots "$r"
    echo "== buildah round $r (load $(load))" >&2
    record bh_cold "${B[@]}" bud --layers -t big "$ctx"
    for _ in $(seq "${BH_NOOP_RUNS:-2}"); do record bh_noop "${B[@]}" bud --layers -t big "$ctx"; done
    change "bh$r"; record bh_one "${B[@]}" bud --layers -t big "$ctx"; restore
    for n in 0 "$steps"; do record "bh_steps$n" "${B[@]}" bud --no-cache --layers -t s "$work/steps$n"; done
  done
  # buildah's overlay storage holds mounts: unmounted by its own rm/rmi.
  for r in $(seq "$rounds"); do
    bh_roots "$r"; "${B[@]}" rm --all >/dev/null 2>&1 || true; "${B[@]}" rmi -af >/dev/null 2>&1 || true
  done
else
  echo "buildah: not measured" >&2
fi
load_after=$(load)
canary_after=$(fs_canary)

# --- the table -----------------------------------------------------------------
m() { med "$@"; }
per_step() { awk -v a="$1" -v b="$2" -v n="$steps" 'BEGIN{ if (a == "-" || b == "-") print "-"; else printf "%.3f", (a-b)/n}'; }
verdict() { # value op limit
  awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN{ if (v == "-" || v == "n/a") print "n/a";
    else if ((op == "<=" && v+0 <= l+0)) print "PASS"; else print "MISS" }'
}
ratio2() { if [ "$1" = - ] || [ "$2" = - ]; then echo -; else ratio "$1" "$2"; fi; }
cat <<HDR

big: $files files, $mb MB; $rounds rounds (no-op: $((rounds * noop_runs)) builds), medians
load average before: $load_before   after: $load_after   ($(nproc) CPUs)
fs canary (ms to create 2,000 files in 40 dirs; ~30 settled): before $canary_before, after $canary_after
wall s / CPU s (user+sys; BuildKit: client + dockerd/containerd cgroup)

| what | rbuild | BuildKit | buildah | reference |
|---|---|---|---|---|
HDR
row() { printf '| %s | %s / %s | %s / %s | %s / %s | %s |\n' "$1" "$(m "rb_$2")" "$(m "rb_$2" 3)" \
  "$(m "bk_$2")" "$(m "bk_$2" 3)" "$(m "bh_$2")" "$(m "bh_$2" 3)" "$3"; }
row "cold build (gzip)" cold "tar\\|pigz -p 2: $(m pigz) / $(m pigz 3)"
printf '| cold build (zstd) | %s / %s | | | tar\\|zstd -T2: %s / %s |\n' "$(m rb_cold_zstd)" "$(m rb_cold_zstd 3)" "$(m zstd)" "$(m zstd 3)"
printf '| (floor for zstd: the same + both sha256 + blob written + tree copied) | | | | %s / %s |\n' "$(m zstd_floor)" "$(m zstd_floor 3)"
row "no-op rebuild" noop ""
row "one file changed (COPY + RUN)" one ""
row "$steps RUN steps --no-cache" "steps$steps" ""
row "base only (0 RUN steps) --no-cache" steps0 ""
printf '| per RUN step (%s − 0)/%s | %s | %s | %s | |\n' "$steps" "$steps" \
  "$(per_step "$(m "rb_steps$steps")" "$(m rb_steps0)")" "$(per_step "$(m "bk_steps$steps")" "$(m bk_steps0)")" \
  "$(per_step "$(m "bh_steps$steps")" "$(m bh_steps0)")"
printf '| RUN step after the big COPY: `RUN true` / `RUN find` (ms, JSON progress) | %s / %s | | | |\n' \
  "$(m rb_runtrue_ms)" "$(m rb_one_run_ms)"
peak=$(maxof rb_ 4)
printf '| peak RSS MB, max over every rbuild command | %s | | | |\n' "$peak"

one_r=$(ratio2 "$(m rb_one)" "$(m bk_one)")
gz_r=$(ratio2 "$(m rb_cold)" "$(m pigz)")
zs_r=$(ratio2 "$(m rb_cold_zstd)" "$(m zstd)")
st_r=$(ratio2 "$(m "rb_steps$steps")" "$(m "bk_steps$steps")")
cat <<HDR

| target (issue 13) | measured | verdict |
|---|---|---|
HDR
printf '| one file changed ≤ 0.2× BuildKit | %s× | %s |\n' "$one_r" "$(verdict "$one_r" '<=' 0.2)"
printf '| one file changed ≤ 1 s | %s s | %s |\n' "$(m rb_one)" "$(verdict "$(m rb_one)" '<=' 1)"
printf '| cold gzip ≤ 1.0× tar\\|pigz -p 2 | %s× (CPU %s×) | %s |\n' "$gz_r" \
  "$(ratio2 "$(m rb_cold 3)" "$(m pigz 3)")" "$(verdict "$gz_r" '<=' 1.0)"
printf '| cold zstd ≤ 1.1× tar\\|zstd -T2 | %s× (CPU %s×) | %s |\n' "$zs_r" \
  "$(ratio2 "$(m rb_cold_zstd 3)" "$(m zstd 3)")" "$(verdict "$zs_r" '<=' 1.1)"
printf '| RUN after the big COPY, without the command, ≤ 20 ms | %s ms | %s |\n' "$(m rb_runtrue_ms)" "$(verdict "$(m rb_runtrue_ms)" '<=' 20)"
printf '| no-op rebuild ≤ 0.1 s | %s s | %s |\n' "$(m rb_noop)" "$(verdict "$(m rb_noop)" '<=' 0.1)"
printf '| %s RUN steps --no-cache ≤ 0.3× BuildKit | %s× | %s |\n' "$steps" "$st_r" "$(verdict "$st_r" '<=' 0.3)"
printf '| peak RSS ≤ 200 MB | %s MB | %s |\n' "$peak" "$(verdict "$peak" '<=' 200)"

if [ "${KEEP:-}" = 1 ]; then rm -rf "${BENCH_TRASH:-$work.trash}"; else trash "$work"; empty_trash; fi

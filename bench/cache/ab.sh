#!/usr/bin/env bash
# A/B of the fresh-runner one-file CI job (bench/cache/run.sh's `one-file`)
# between two rbuild binaries, alternating in the same minutes: one seed
# (cache exported to a local registry), then ROUNDS rounds of, per binary,
# a fresh store that builds the tree with another one-file change (so the
# registry never has the new layer) with --cache-from and --push. Prints
# wall seconds and CPU seconds (user+sys of rbuild and its threads; the
# registry's CPU, from /proc, apart) per run, and the medians. BENCH_WORK on
# a tmpfs keeps ext4's inode allocation after deletes out of the figures.
# Usage: bench/cache/ab.sh OLD_BIN NEW_BIN  (env: ROUNDS=4, BENCH_WORK)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export BENCH_WORK=${BENCH_WORK:-/tmp/rbuild-bench-cache-ab}
source "$repo/bench/lib.sh"
work=$BENCH_WORK
old=$1 new=$2
rm -rf "$work"
cache_rig "$new"
printf 'load before: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
n=0
declare -A walls cpus
for round in $(seq "${ROUNDS:-4}"); do
  for which in old new; do
    n=$((n + 1))
    cp "$work/orig" "$work/ctx/tree/$f"; printf '\n// change %s\n' "$n" >> "$work/ctx/tree/$f"
    bin=$old; [ "$which" = new ] && bin=$new
    # A new store per run, all deleted at the end: on a journal-less ext4
    # a store deleted right before a run makes its inode allocations slow.
    r0=$(awk '{print $14+$15}' "/proc/$REGISTRY_PID/stat")
    /usr/bin/time -f '%e %U %S' -o "$work/time" "$bin" --root "$work/ci-$n" build --progress plain \
      --cache-from "$cache" --push -t "$reg/app:r" "$work/ctx" >"$work/$which-$round.log" 2>&1
    read -r wall user sys < "$work/time"
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", u+s}')
    r1=$(awk '{print $14+$15}' "/proc/$REGISTRY_PID/stat")
    regcpu=$(awk -v a="$r0" -v b="$r1" 'BEGIN{printf "%.2f", (b-a)/100}')
    printf '%-4s round %s  wall %6s s  cpu %6s s  registry cpu %5s s  load %s\n' "$which" "$round" "$wall" "$cpu" "$regcpu" "$(cut -d' ' -f1 /proc/loadavg)"
    walls[$which]+="$wall "; cpus[$which]+="$cpu "
  done
done
for which in old new; do
  printf '%-4s median wall %s s, median cpu %s s\n' "$which" "$(echo "${walls[$which]}" | med_of)" "$(echo "${cpus[$which]}" | med_of)"
done
printf 'load after: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
rm -rf "$work"/ci-*

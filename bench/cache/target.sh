#!/usr/bin/env bash
# Issue 11's one-file target, measured in rounds: one seed (cache exported
# to a loopback docker-registry, image pushed), then ROUNDS (5) rounds of,
# alternating, the fresh-runner job (a new store, `--cache-from`, `--push`:
# bench/cache/run.sh's `one-file`) and the same job on a warm runner (the
# seed's store, kept from round to round: `local-1f-push`), each round
# with another one-file change (so neither the registry nor a store has the
# new layer). Prints wall and CPU (user+sys) seconds per job, the
# registry's CPU over each, the medians and fresh/warm of the medians (the
# target: <= 1.3x). One job's wall time swings by up to 40 % on this VM,
# which is why the verdict takes medians of alternating rounds.
# PRETOUCH_MB=N writes and frees N MB of /dev/shm right before each job:
# on this Firecracker VM the host backs a guest page only when it is first
# written and takes free pages back seconds after they are freed (virtio
# balloon free page reporting), and a page written for the first time costs
# ~3 us more (dd into tmpfs: 350 MB/s cold, 1.9-2.8 GB/s just freed), so a
# job's figures depend on how much memory the kernel hands it that the host
# took back. With it, both jobs start on backed memory (docs/benchmarks.md).
# Usage: bench/cache/target.sh [RBUILD_BIN]  (env: ROUNDS=5, PRETOUCH_MB=0,
# BENCH_WORK)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export BENCH_WORK=${BENCH_WORK:-/var/tmp/rbuild-bench-cache-target}
source "$repo/bench/lib.sh"
work=$BENCH_WORK
bin=${1:-$repo/target/release/rbuild}
[ -d "$work" ] && trash "$work"
cache_rig "$bin"
settle
printf 'load before: %s   fs canary: %s ms   pretouch: %s MB\n' "$(load)" "$SETTLED_MS" "${PRETOUCH_MB:-0}"
n=0
declare -A walls cpus
job() { # which store
  n=$((n + 1))
  cp "$work/orig" "$work/ctx/tree/$f"; printf '\n// change %s\n' "$n" >> "$work/ctx/tree/$f"
  local r0 r1 wall user sys
  if [ "${PRETOUCH_MB:-0}" -gt 0 ]; then
    dd if=/dev/zero of=/dev/shm/rbuild-bench-pretouch bs=1M count="$PRETOUCH_MB" 2>/dev/null
    rm -f /dev/shm/rbuild-bench-pretouch
  fi
  r0=$(awk '{print $14+$15}' "/proc/$REGISTRY_PID/stat")
  /usr/bin/time -f '%e %U %S %M' -o "$work/time" "$bin" --root "$2" build --progress plain \
    --cache-from "$cache" --push -t "$reg/app:r" "$work/ctx" >"$work/$1-$n.log" 2>&1
  r1=$(awk '{print $14+$15}' "/proc/$REGISTRY_PID/stat")
  read -r wall user sys rss < "$work/time"
  local cpu; cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN{printf "%.2f", u+s}')
  printf '%-6s job %2s  wall %5s s  cpu %5s s  registry cpu %5s s  rss %4s MB  load %s\n' "$1" "$n" \
    "$wall" "$cpu" "$(awk -v a="$r0" -v b="$r1" 'BEGIN{printf "%.2f", (b-a)/100}')" \
    "$((rss / 1024))" "$(cut -d' ' -f1 /proc/loadavg)"
  walls[$1]+="$wall "; cpus[$1]+="$cpu "
}
for round in $(seq "${ROUNDS:-5}"); do
  job fresh "$work/ci-$round"
  job warm "$work/seed"
done
fw=$(echo "${walls[fresh]}" | med_of); ww=$(echo "${walls[warm]}" | med_of)
printf 'fresh median wall %s s, cpu %s s\n' "$fw" "$(echo "${cpus[fresh]}" | med_of)"
printf 'warm  median wall %s s, cpu %s s\n' "$ww" "$(echo "${cpus[warm]}" | med_of)"
printf 'fresh / warm (medians): %sx (target <= 1.3x)\n' "$(ratio "$fw" "$ww")"
printf 'load after: %s\n' "$(load)"
kill "$REGISTRY_PID" 2>/dev/null || true
trash "$work"; empty_trash

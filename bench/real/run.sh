#!/usr/bin/env bash
# Real Dockerfiles on a Debian bookworm base (issue 13): the base is made with
# `mmdebstrap --variant=minbase bookworm` (cached under /var/tmp so reruns
# skip it) and added with `FROM scratch` + `ADD rootfs.tar /`. Three
# workloads (bench/real/{python,pip,npm}): apt, pip (PyPI) and npm (npm
# registry) installs in RUN steps, then COPY of the source and a RUN that
# uses it. For rbuild, BuildKit (a dockerd started for the run) and buildah
# (bud --layers, overlay): the cold build (empty state), then ROUNDS times a
# no-op rebuild and a rebuild after one source file changed (medians).
# The network is used in RUN (host network for every builder).
# Usage: bench/real/run.sh [WORKLOAD...]   (default: python pip npm)
#   env: ROUNDS=3, RBUILD=path, BENCH_WORK=dir, ROOTFS=path to a cached tar,
#        SKIP_BUILDKIT=1, SKIP_BUILDAH=1, KEEP=1
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export BENCH_WORK=${BENCH_WORK:-/var/tmp/rbuild-bench-real}
source "$repo/bench/lib.sh"
rounds=${ROUNDS:-3}
work=$BENCH_WORK
workloads=("$@")
[ ${#workloads[@]} -gt 0 ] || workloads=(python pip npm)
# Nothing is deleted while anything is measured (`trash` in bench/lib.sh:
# this VM's journal-less ext4 bills deletions to the next file creations).
trash "$work"; mkdir -p "$work"
: > "$work/rows"
rbuild=${RBUILD:-$repo/target/release/rbuild}
if [ -z "${RBUILD:-}" ]; then
  (cd "$repo" && nice -n 15 cargo build --release --quiet)
fi

# --- the Debian base (cached) ----------------------------------------------------
rootfs=${ROOTFS:-/var/tmp/rbuild-bench-debian/rootfs.tar}
if [ ! -s "$rootfs" ]; then
  command -v mmdebstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mmdebstrap
  mkdir -p "$(dirname "$rootfs")"
  echo "making the Debian bookworm minbase rootfs (once) at $rootfs…" >&2
  mmdebstrap --variant=minbase --format=tar bookworm "$rootfs.tmp" >&2
  mv "$rootfs.tmp" "$rootfs"
fi
# Behind a TLS-intercepting proxy (as on the project's machines) pip and npm
# need the proxy's CA: the host's locally added CAs are appended to the base
# (/usr/local/share/ca-certificates), and the Dockerfiles' `apt-get install
# ca-certificates` picks them up like any other. LOCAL_CAS=0 leaves them out.
base_tar=$work/rootfs.tar
cp "$rootfs" "$base_tar"
if [ "${LOCAL_CAS:-1}" = 1 ] && compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  tar -C / -rf "$base_tar" --owner=0 --group=0 ./usr/local/share/ca-certificates
fi
echo "base: $rootfs ($(( $(stat -c %s "$base_tar") / 1024 / 1024 )) MB)" >&2

source_file() { case $1 in python) echo app.py ;; pip) echo src/app.py ;; npm) echo src/index.js ;; esac; }
prepare() { # workload → fresh context dir $work/ctx-$1
  local c=$work/ctx-$1
  trash "$c"; cp -r "$here/$1" "$c"
  ln "$base_tar" "$c/rootfs.tar"
  cp "$c/$(source_file "$1")" "$work/$1.src.bak"
}
change() { # a comment line, in the language of the file
  local c="#"; [ "$1" = npm ] && c="//"
  echo "$c changed $(date +%s%N)" >> "$work/ctx-$1/$(source_file "$1")"
}
restore() { cp "$work/$1.src.bak" "$work/ctx-$1/$(source_file "$1")"; }

# measure_builder PREFIX WORKLOAD CMD...: cold, then ROUNDS × (no-op, changed)
measure_builder() {
  local p=$1 w=$2; shift 2
  local c=$work/ctx-$w
  echo "== $p $w: cold (load $(load))" >&2
  record "${p}_${w}_cold" "$@" "$c"
  for _ in $(seq "$rounds"); do
    record "${p}_${w}_noop" "$@" "$c"
    change "$w"
    record "${p}_${w}_one" "$@" "$c"
  done
  restore "$w"
}

settle
canary_before=$SETTLED_MS
load_before=$(load)
echo "load before: $load_before" >&2
for w in "${workloads[@]}"; do
  prepare "$w"
  measure_builder rb "$w" "$rbuild" --root "$work/rb-$w" build --progress plain -t "real-$w"
done

# A fresh dockerd data root per workload instead of `docker builder prune`.
bk_start() { start_dockerd "$work/dockerd-$1" && cg_adopt $(tree_pids "$DOCKERD_PID"); }
if [ "${SKIP_BUILDKIT:-}" != 1 ] && bk_start "${workloads[0]}"; then
  trap 'stop_dockerd; cg_drop' EXIT
  for w in "${workloads[@]}"; do
    [ "$w" = "${workloads[0]}" ] || { stop_dockerd; cg_drop; bk_start "$w"; }
    measure_builder bk "$w" /usr/bin/docker build --network host -t "real-$w"
  done
  stop_dockerd; cg_drop; trap - EXIT
else
  echo "BuildKit: not measured" >&2
fi

if [ "${SKIP_BUILDAH:-}" != 1 ] && command -v buildah >/dev/null; then
  for w in "${workloads[@]}"; do
    bst=$work/buildah-$w
    B=(buildah --root "$bst/root" --runroot "$bst/run" --storage-driver overlay)
    measure_builder bh "$w" "${B[@]}" bud --layers --network host -t "real-$w"
  done
  for w in "${workloads[@]}"; do # unmounts buildah's layers; the files go at the end
    bst=$work/buildah-$w
    buildah --root "$bst/root" --runroot "$bst/run" --storage-driver overlay rmi -af >/dev/null 2>&1 || true
  done
else
  echo "buildah: not measured" >&2
fi
load_after=$(load)
canary_after=$(fs_canary)

ratio2() { if [ "$1" = - ] || [ "$2" = - ]; then echo -; else ratio "$1" "$2"; fi; }
printf '\nload average before: %s   after: %s   (%s CPUs)\n' "$load_before" "$load_after" "$(nproc)"
printf 'fs canary (ms to create 2,000 files in 40 dirs; ~30 settled): before %s, after %s\n' "$canary_before" "$canary_after"
printf 'seconds, wall / CPU (BuildKit: client + dockerd/containerd cgroup); cold: 1 build, no-op and changed: medians of %s\n\n' "$rounds"
echo '| workload | builder | cold | no-op | source file changed | peak RSS MB |'
echo '|---|---|---|---|---|---|'
for w in "${workloads[@]}"; do
  for b in rb:rbuild bk:BuildKit bh:buildah; do
    p=${b%%:*}
    [ "$(med "${p}_${w}_cold")" = - ] && continue
    printf '| %s | %s | %s / %s | %s / %s | %s / %s | %s |\n' "$w" "${b#*:}" \
      "$(med "${p}_${w}_cold")" "$(med "${p}_${w}_cold" 3)" "$(med "${p}_${w}_noop")" "$(med "${p}_${w}_noop" 3)" \
      "$(med "${p}_${w}_one")" "$(med "${p}_${w}_one" 3)" "$([ "$p" = bk ] && echo - || maxof "${p}_${w}_" 4)"
  done
done
echo
echo '| workload | rbuild / BuildKit: cold | no-op | source file changed | target (changed) |'
echo '|---|---|---|---|---|'
for w in "${workloads[@]}"; do
  r=$(ratio2 "$(med "rb_${w}_one")" "$(med "bk_${w}_one")")
  t=-; [ "$w" = python ] && t="≤ 0.5: $(awk -v v="$r" 'BEGIN{ if (v == "-") print "n/a"; else if (v+0 <= 0.5) print "PASS"; else print "MISS" }')"
  printf '| %s | %s× | %s× | %s× | %s |\n' "$w" "$(ratio2 "$(med "rb_${w}_cold")" "$(med "bk_${w}_cold")")" \
    "$(ratio2 "$(med "rb_${w}_noop")" "$(med "bk_${w}_noop")")" "$r" "$t"
done
if [ "${KEEP:-}" = 1 ]; then rm -rf "${BENCH_TRASH:-$work.trash}"; else trash "$work"; empty_trash; fi

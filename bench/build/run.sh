#!/usr/bin/env bash
# Build benchmark (issue: images for real). Builds `COPY . /src` of a generated
# ~20,000-file / ~300 MB tree and prints, side by side in one run:
#   rbuild cold (gzip), no-op rebuild, one-file-changed rebuild, peak RSS
#   tar -c | pigz -p 2  and  tar -c | zstd -T2  over the same tree
#   buildah bud --layers (cold, no-op, one-file) and BuildKit via a dockerd
#   started for the run (cold, no-op, one-file), when available.
# Usage: bench/build/run.sh [WORKDIR]   (default /tmp/rbuild-bench-build)
# Env: SKIP_BUILDAH=1, SKIP_BUILDKIT=1 to leave a reference out.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=${1:-/tmp/rbuild-bench-build}
mkdir -p "$work"
export BENCH_WORK="$work"
source "$repo/bench/lib.sh"
ctx="$work/ctx"

echo "building rbuild (release)…" >&2
(cd "$repo" && cargo build --release --quiet)
rbuild="$repo/target/release/rbuild"

if [ ! -f "$ctx/Dockerfile" ]; then
  echo "generating the tree in $ctx…" >&2
  rm -rf "$ctx"
  python3 "$repo/bench/gen-tree.py" "$ctx"
  printf 'FROM scratch\nCOPY . /src\nCMD ["/src/none"]\n' > "$ctx/Dockerfile"
fi
files=$(find "$ctx" -type f | wc -l)
bytes=$(du -sb "$ctx" | cut -f1)
victim="$ctx/src/m00/s00/file00000.rs"

sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
pigz_t=$(measure sh -c "tar -C '$ctx' -cf - . | pigz -p 2 -6 > /dev/null")
zstd_t=$(measure sh -c "tar -C '$ctx' -cf - . | zstd -T2 -3 -q > /dev/null")

root="$work/rbuild-root"
rm -rf "$root"
cold=$(measure "$rbuild" --root "$root" build --progress plain -t bench:cold "$ctx")
cold_zstd=$(measure "$rbuild" --root "$root-zstd" build --no-cache --compression zstd --progress plain -t bench:z "$ctx")
rm -rf "$root-zstd"
noop=$(measure "$rbuild" --root "$root" build --progress plain -t bench:noop "$ctx")
# A sub-second figure needs repeated runs: the mean of 10 (hyperfine).
if command -v hyperfine >/dev/null; then
  noop="$(mean_secs "$rbuild" --root "$root" build --progress plain -t bench:noop "$ctx") $(rss "$noop")"
fi
cp "$victim" "$work/victim.bak"
echo "// changed $(date +%s%N)" >> "$victim"
onefile=$(measure "$rbuild" --root "$root" build --progress plain -t bench:one "$ctx")
cp "$work/victim.bak" "$victim"

printf '\ncontext: %s files, %s MB (du -sb)\n\n' "$files" "$((bytes / 1024 / 1024))"
printf '%-44s %8s %8s %s\n' "what" "seconds" "peakMB" "ratio"
printf '%-44s %8s %8s\n' "tar -c | pigz -p 2" "$(secs "$pigz_t")" "$(rss "$pigz_t")"
printf '%-44s %8s %8s\n' "tar -c | zstd -T2" "$(secs "$zstd_t")" "$(rss "$zstd_t")"
printf '%-44s %8s %8s %s\n' "rbuild cold build (gzip)" "$(secs "$cold")" "$(rss "$cold")" "$(ratio "$(secs "$cold")" "$(secs "$pigz_t")")x tar|pigz (target <= 1.25)"
printf '%-44s %8s %8s %s\n' "rbuild cold build (zstd)" "$(secs "$cold_zstd")" "$(rss "$cold_zstd")" "$(ratio "$(secs "$cold_zstd")" "$(secs "$zstd_t")")x tar|zstd"
printf '%-44s %8s %8s %s\n' "rbuild no-op rebuild (mean of 10)" "$(secs "$noop")" "$(rss "$noop")" "(target < 0.2 s)"
printf '%-44s %8s %8s %s\n' "rbuild one-file-changed rebuild" "$(secs "$onefile")" "$(rss "$onefile")" "$(ratio "$(secs "$onefile")" "$(secs "$cold")")x cold (target <= 1.3)"

if [ "${SKIP_BUILDAH:-}" != 1 ] && command -v buildah >/dev/null; then
  broot="$work/buildah"
  rm -rf "$broot"; mkdir -p "$broot"
  bflags=(--root "$broot/root" --runroot "$broot/run" --storage-driver vfs)
  bcold=$(measure buildah "${bflags[@]}" bud --layers -t bench:b "$ctx")
  bnoop=$(measure buildah "${bflags[@]}" bud --layers -t bench:b "$ctx")
  echo "// changed $(date +%s%N)" >> "$victim"
  bone=$(measure buildah "${bflags[@]}" bud --layers -t bench:b "$ctx")
  cp "$work/victim.bak" "$victim"
  printf '%-44s %8s %8s %s\n' "buildah bud --layers cold" "$(secs "$bcold")" "$(rss "$bcold")" "rbuild is $(ratio "$(secs "$bcold")" "$(secs "$cold")")x faster"
  printf '%-44s %8s %8s %s\n' "buildah no-op rebuild" "$(secs "$bnoop")" "$(rss "$bnoop")" "rbuild is $(ratio "$(secs "$bnoop")" "$(secs "$noop")")x faster"
  printf '%-44s %8s %8s %s\n' "buildah one-file-changed rebuild" "$(secs "$bone")" "$(rss "$bone")" "rbuild is $(ratio "$(secs "$bone")" "$(secs "$onefile")")x faster"
  rm -rf "$broot"
fi

if [ "${SKIP_BUILDKIT:-}" != 1 ] && start_dockerd "$work/dockerd"; then
  trap stop_dockerd EXIT
  kcold=$(measure /usr/bin/docker build --network host -t bench:k "$ctx")
  knoop=$(measure /usr/bin/docker build --network host -t bench:k "$ctx")
  echo "// changed $(date +%s%N)" >> "$victim"
  kone=$(measure /usr/bin/docker build --network host -t bench:k "$ctx")
  cp "$work/victim.bak" "$victim"
  printf '%-44s %8s %8s %s\n' "BuildKit (dockerd 20.10) cold" "$(secs "$kcold")" "-" "rbuild is $(ratio "$(secs "$kcold")" "$(secs "$cold")")x faster"
  printf '%-44s %8s %8s %s\n' "BuildKit no-op rebuild" "$(secs "$knoop")" "-" "rbuild is $(ratio "$(secs "$knoop")" "$(secs "$noop")")x faster"
  printf '%-44s %8s %8s %s\n' "BuildKit one-file-changed rebuild" "$(secs "$kone")" "-" "rbuild is $(ratio "$(secs "$kone")" "$(secs "$onefile")")x faster"
  stop_dockerd; trap - EXIT
else
  echo "BuildKit: not measured (dockerd unavailable)" >&2
fi

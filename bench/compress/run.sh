#!/usr/bin/env bash
# Compression benchmark: our tar+gzip vs `tar -c | pigz -p 2`, our tar+zstd
# vs `tar -c | zstd -T2`, on a generated ~300 MB / ~20,000-file tree.
# Prints wall time, output size, ratio and peak RSS (/usr/bin/time -v).
# Usage: bench/compress/run.sh [WORKDIR]   (default /tmp/rbuild-bench)
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-/tmp/rbuild-bench}
TREE=$WORK/tree
mkdir -p "$WORK"

if [ ! -d "$TREE" ]; then
  python3 bench/gen-tree.py "$TREE"
fi

# The build shares the machine: take the global cargo lock when it exists.
LOCK=/work/cargo.lock
build() { cargo test --release --test layer_bench --no-run 2>&1; }
if [ -e "$LOCK" ]; then OUT=$(flock "$LOCK" bash -c "$(declare -f build); build"); else OUT=$(build); fi
BIN=$(printf '%s\n' "$OUT" | sed -n 's/.*Executable tests\/layer_bench.rs (\(.*\))/\1/p' | tail -1)
[ -x "$BIN" ] || { echo "could not find the layer_bench binary"; printf '%s\n' "$OUT"; exit 1; }

# Warm the page cache so every contender reads from memory.
tar -C "$TREE" -cf - . | wc -c > "$WORK/tar.size"
TAR_SIZE=$(cat "$WORK/tar.size")
echo "tree: $(find "$TREE" -type f | wc -l) files, tar stream $((TAR_SIZE / 1048576)) MiB"

measure() { # name outfile command...
  local name=$1 out=$2; shift 2
  local log=$WORK/$name.time
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -v -o "$log" "$@" > /dev/null
  end=$(date +%s.%N)
  local rss size
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$log")
  size=$(stat -c %s "$out")
  printf '%-22s %7.2f s  %10d bytes  ratio %5.2f  peak RSS %6.1f MB\n' \
    "$name" "$(echo "$end - $start" | bc)" "$size" "$(echo "scale=2; $TAR_SIZE / $size" | bc)" \
    "$(echo "scale=1; $rss / 1024" | bc)"
}

ours() { # codec out
  RBUILD_BENCH_DIR=$TREE RBUILD_BENCH_OUT=$2 RBUILD_BENCH_CODEC=$1 RBUILD_BENCH_THREADS=2 \
    "$BIN" --ignored --nocapture --test-threads=1 bench_write_layer
}

for round in 1 2; do
  echo "--- round $round"
  measure rbuild-gzip "$WORK/ours.tar.gz" bash -c "$(declare -f ours); TREE=$TREE BIN=$BIN; ours gzip $WORK/ours.tar.gz"
  measure "tar|pigz -p 2" "$WORK/pigz.tar.gz" bash -c "tar -C '$TREE' -cf - . | pigz -p 2 > '$WORK/pigz.tar.gz'"
  measure rbuild-zstd "$WORK/ours.tar.zst" bash -c "$(declare -f ours); TREE=$TREE BIN=$BIN; ours zstd $WORK/ours.tar.zst"
  measure "tar|zstd -T2" "$WORK/zstd.tar.zst" bash -c "tar -C '$TREE' -cf - . | zstd -q -T2 -3 > '$WORK/zstd.tar.zst'"
done

gzip -t "$WORK/ours.tar.gz" && pigz -t "$WORK/ours.tar.gz" && zstd -q -t "$WORK/ours.tar.zst" && echo "outputs validate (gzip -t, pigz -t, zstd -t)"

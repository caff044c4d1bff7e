#!/usr/bin/env bash
# Compression benchmark: rbuild's layer writer (chunked gzip / zstd, with a
# chunk cache as the store gives it) against `tar -c | pigz -p 2` and
# `tar -c | zstd -T2 -3`, side by side in each round, on the generated
# ~300 MB / ~20,000-file tree of bench/gen-tree.py. Also the one-file-changed
# rewrite with a warm chunk cache. Prints per-round figures and medians of
# wall time and CPU time (user+sys: the steadier figure on a shared machine).
# Usage: bench/compress/run.sh [WORKDIR] [ROUNDS]
#   (default /tmp/rbuild-bench, 5 rounds). Outputs go to /dev/shm so the
#   disk's writeback does not add noise (the tree stays in WORKDIR).
# Env: BIN=path to a prebuilt integration test binary (skips the build).
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${1:-/tmp/rbuild-bench}
ROUNDS=${2:-5}
TREE=$WORK/tree
OUT=$(mktemp -d /dev/shm/rbuild-compress.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
mkdir -p "$WORK"
[ -d "$TREE" ] || python3 bench/gen-tree.py "$TREE"

if [ -z "${BIN:-}" ]; then
  # An optimized build of the bench driver (release profile).
  OUTPUT=$(cargo test --release --test integration --no-run 2>&1)
  BIN=$(printf '%s\n' "$OUTPUT" | sed -n 's/.*Executable tests\/integration\/main.rs (\(.*\))/\1/p' | tail -1)
fi
[ -x "$BIN" ] || { echo "could not find the integration test binary"; exit 1; }

# Warm the page cache (through cat: GNU tar skips reading into /dev/null).
tar -C "$TREE" -cf - . | cat > /dev/null
VICTIM=$(find "$TREE" -type f -name '*.rs' | sort | sed -n '5000p')
cp "$VICTIM" "$OUT/victim.bak"

ours() { # codec out [cache]
  RBUILD_BENCH_DIR=$TREE RBUILD_BENCH_OUT=$2 RBUILD_BENCH_CODEC=$1 RBUILD_BENCH_THREADS=2 \
    RBUILD_BENCH_CACHE=${3:-} "$BIN" --ignored --nocapture --test-threads=1 --exact layer_bench::bench_write_layer \
    | grep RESULT >> "$OUT/results"
}
export -f ours; export TREE BIN OUT

# name out command… → appends "name wall cpu size rssMB" to $OUT/rows
measure() {
  local name=$1 out=$2; shift 2
  /usr/bin/time -o "$OUT/t" -f '%e %U %S %M' "$@" > /dev/null
  read -r wall user sys rss < "$OUT/t"
  printf '%s %s %.2f %s %.0f\n' "$name" "$wall" "$(echo "$user + $sys" | bc)" \
    "$(stat -c %s "$out")" "$(echo "$rss / 1024" | bc)" | tee -a "$OUT/rows"
}

echo "tree: $(find "$TREE" -type f | wc -l) files; load: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
  echo "--- round $round (load $(cut -d' ' -f1 /proc/loadavg))"
  measure tar\|pigz-p2 "$OUT/ref.gz" sh -c "tar -C '$TREE' -cf - . | pigz -p 2 -6 > '$OUT/ref.gz'"
  rm -rf "$OUT/cg"
  measure rbuild-gzip-cold "$OUT/g.gz" bash -c "ours gzip '$OUT/g.gz' '$OUT/cg'"
  measure tar\|zstd-T2 "$OUT/ref.zst" sh -c "tar -C '$TREE' -cf - . | zstd -q -T2 -3 > '$OUT/ref.zst'"
  rm -rf "$OUT/cz"
  measure rbuild-zstd-cold "$OUT/z.zst" bash -c "ours zstd '$OUT/z.zst' '$OUT/cz'"
  echo "// changed in round $round" >> "$VICTIM"
  measure rbuild-gzip-1file "$OUT/g1.gz" bash -c "ours gzip '$OUT/g1.gz' '$OUT/cg'"
  measure rbuild-zstd-1file "$OUT/z1.zst" bash -c "ours zstd '$OUT/z1.zst' '$OUT/cz'"
  cp "$OUT/victim.bak" "$VICTIM"
done

echo "--- medians over $ROUNDS rounds: wall s, cpu s, bytes, peak RSS MB"
for name in tar\|pigz-p2 rbuild-gzip-cold rbuild-gzip-1file tar\|zstd-T2 rbuild-zstd-cold rbuild-zstd-1file; do
  awk -v n="$name" '$1 == n' "$OUT/rows" | sort -k2 -n | awk -v n="$name" '
    { w[NR]=$2; c[NR]=$3; s=$4; r=$5 } END { m=int((NR+1)/2);
      printf "%-20s %6.2f %6.2f %11d %5d\n", n, w[m], c[m], s, r }'
done
grep -o 'codec=[a-z]* .*' "$OUT/results" | awk '{print $1, $NF, $(NF-1)}' | sort | uniq -c

# What today's (pre-chunking) writer would emit at the same level: pigz with
# 512 KiB blocks primed by the previous block (the scheme of pgzip, removed
# since) and zstdmt,
# over our own tar stream (RBUILD_BENCH_CODEC=none).
ours none "$OUT/t.tar"
echo "ratio vs the unchunked equivalent on our tar ($(stat -c %s "$OUT/t.tar") bytes):"
echo "  gzip: chunked $(stat -c %s "$OUT/g.gz") vs pigz -b 512 $(pigz -p 2 -6 -b 512 -c "$OUT/t.tar" | wc -c)"
echo "  zstd: chunked $(stat -c %s "$OUT/z.zst") vs zstd -T2 $(zstd -q -T2 -3 -c "$OUT/t.tar" | wc -c)"
gzip -t "$OUT/g.gz" "$OUT/g1.gz" && pigz -t "$OUT/g.gz" && zstd -q -t "$OUT/z.zst" "$OUT/z1.zst" \
  && echo "outputs validate (gzip -t, pigz -t, zstd -t)"

#!/usr/bin/env bash
# Cold gzip build against `tar | pigz -p 2` (issue 13), and an old rbuild
# binary against a new one, alternating in each round: `FROM scratch` +
# `COPY tree /src` on bench/gen-tree.py's tree (20k files, ~300 MB), each
# rbuild build in a fresh store. Prints per-run rows (wall s, CPU s, peak RSS
# MB), medians, and the layer sizes (the ratio check: the new codec must stay
# within 2 % of the old one's size at the same level).
# Usage: OLD=/path/to/old/rbuild bench/gzip/run.sh
#   (env: ROUNDS=3, NEW=target/release/rbuild, TREE=dir to build instead of
#   the generated tree, LEVELS="6" levels to compare
#   sizes at (one build each, after the timed rounds), BENCH_WORK=dir,
#   KEEP=1 keeps the work dir)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export BENCH_WORK=${BENCH_WORK:-/var/tmp/rbuild-bench-gzip}
source "$repo/bench/lib.sh"
old=${OLD:?OLD=path to the rbuild binary to compare against}
new=${NEW:-$repo/target/release/rbuild}
rounds=${ROUNDS:-3}
work=$BENCH_WORK
mkdir -p "$work"; : > "$work/rows"
[ "${KEEP:-}" = 1 ] || trap 'rm -rf "$work/st-"*' EXIT

ctx=$work/ctx
if [ -n "${TREE:-}" ]; then
  # Another tree (e.g. real source code) instead of the generated one: a
  # copy, since COPY does not follow a symlink out of the context.
  mkdir -p "$ctx"; rm -rf "$ctx/tree"; cp -a "$TREE" "$ctx/tree"
else
  [ -d "$ctx/tree" ] || python3 "$repo/bench/gen-tree.py" "$ctx/tree" --files 20000 >/dev/null
fi
printf 'FROM scratch\nCOPY tree /src\n' > "$ctx/Dockerfile"
# Warm the page cache (through cat: GNU tar skips reading into /dev/null).
tar -C "$ctx/tree" -cf - . | cat > /dev/null

# The layer blob of the last build in store $1: its largest blob.
layer_size() { find "$1/blobs/sha256" -type f -printf '%s\n' | sort -n | tail -1; }
cold() { # name binary [level]
  local st=$work/st-$1
  rm -rf "$st"
  local lv=(); [ -n "${3:-}" ] && lv=(--compression-level "$3")
  record "$1" "$2" --root "$st" build --progress plain "${lv[@]}" -t big "$ctx"
  echo "$1 $(layer_size "$st")" >> "$work/sizes"
  rm -rf "$st"
}

: > "$work/sizes"
echo "tree: $(find "$ctx/tree" -type f | wc -l) files, $(du -sm "$ctx/tree" | cut -f1) MB; load $(load)" >&2
for r in $(seq "$rounds"); do
  echo "== round $r (load $(load))" >&2
  record pigz sh -c "tar -C '$ctx/tree' -cf - . | pigz -p 2 -6 > /dev/null"
  # Alternate which binary goes first, so neither always gets the quieter slot.
  if [ $((r % 2)) = 1 ]; then cold old "$old"; cold new "$new"; else cold new "$new"; cold old "$old"; fi
done
echo "load after: $(load)" >&2
for lv in ${LEVELS:-6}; do
  cold "old-l$lv" "$old" "$lv"; cold "new-l$lv" "$new" "$lv"
done
tar -C "$ctx/tree" -cf - . | pigz -p 2 -6 | wc -c | sed 's/^/pigz-6 /' >> "$work/sizes"

echo
echo "| | wall s (median) | CPU s (median) | peak RSS MB |"
echo "|---|---|---|---|"
for n in pigz old new; do
  printf '| %s | %s | %s | %s |\n' "$n" "$(med $n)" "$(med $n 3)" "$(med $n 4)"
done
printf '\nnew/pigz: wall %s×, CPU %s×; new/old: wall %s×, CPU %s×\n' \
  "$(ratio "$(med new)" "$(med pigz)")" "$(ratio "$(med new 3)" "$(med pigz 3)")" \
  "$(ratio "$(med new)" "$(med old)")" "$(ratio "$(med new 3)" "$(med old 3)")"
echo; echo "layer sizes (bytes):"; sort -u "$work/sizes"

#!/bin/bash
# Fills fuzz/corpus/<target>/ with seeds from testdata/ (run from the repo root).
set -euo pipefail
c=fuzz/corpus
mkdir -p $c/dockerfile $c/word $c/dockerignore $c/reference $c/unpack
for d in testdata/corpus/buildkit-parser/*/ testdata/corpus/buildkit-parser-negative/*/; do
  [ -f "$d/Dockerfile" ] && cp "$d/Dockerfile" "$c/dockerfile/$(basename "$d")"
done
i=0
for f in testdata/corpus/buildkit-shell/envVarTest testdata/corpus/buildkit-shell/wordsTest; do
  grep -v '^#' "$f" | cut -d'|' -f1 | while IFS= read -r w; do
    i=$((i + 1)); printf '%s' "$w" > "$c/word/$(basename "$f")-$i"
  done
done
printf '*.md\n!README.md\n**/node_modules\n' > $c/dockerignore/basic
printf 'a/**/b\n[a-c]?x\n!**/keep\n/abs\\*\n' > $c/dockerignore/globs
for r in alpine alpine:3.19 localhost:5000/a/b:v1 '[::1]:5000/x' a__b-c.d/e \
  "ghcr.io/o/r@sha256:$(printf '0%.0s' $(seq 64))"; do
  printf '%s' "$r" > "$c/reference/$(printf '%s' "$r" | sha256sum | cut -c1-12)"
done
# A few real layer tars, made here with tar(1).
t=$(mktemp -d)
mkdir -p "$t/src/d" && echo hi > "$t/src/d/f" && ln -s ../d/f "$t/src/l"
tar -C "$t/src" -cf $c/unpack/plain.tar . && gzip -c $c/unpack/plain.tar > $c/unpack/plain.tar.gz
rm -rf "$t"
echo "seeded $(find $c -type f | wc -l) files under $c"

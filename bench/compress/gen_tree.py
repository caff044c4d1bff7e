#!/usr/bin/env python3
"""Generates the compression benchmark tree: ~20,000 files, ~300 MB.

About half the bytes are source-like text (seeded pseudo-random code lines,
~19,900 files of 1-15 KB) and half are incompressible random binaries
(100 files of 1.5 MB). Deterministic: the same seed gives the same tree.
"""
import os
import random
import sys

root = sys.argv[1]
rng = random.Random(42)
words = ["fn", "let", "mut", "self", "return", "match", "impl", "struct", "pub", "use",
         "Result", "Option", "Some", "None", "Ok", "Err", "String", "Vec", "usize", "u32",
         "if", "else", "for", "in", "while", "loop", "break", "continue", "where", "const",
         "config", "buffer", "layer", "digest", "path", "entry", "reader", "writer", "index",
         "value", "error", "context", "parse", "build", "stage", "image", "manifest", "blob"]
punct = [" = ", "(", ")", ": ", ", ", ".", "::", " -> ", " {", "}", ";", " + ", " & "]


def line():
    n = rng.randint(2, 12)
    parts = []
    for _ in range(n):
        w = rng.choice(words)
        if rng.random() < 0.3:
            w += "_" + rng.choice(words)
        if rng.random() < 0.1:
            w += str(rng.randint(0, 999))
        parts.append(w)
        parts.append(rng.choice(punct))
    return "    " * rng.randint(0, 4) + "".join(parts) + "\n"


count = 0
for d in range(200):
    sub = os.path.join(root, "src", f"mod{d:03}", f"inner{d % 7}")
    os.makedirs(sub, exist_ok=True)
    for f in range(99):
        target = rng.randint(1000, 15000)
        text = []
        size = 0
        while size < target:
            line_text = line()
            text.append(line_text)
            size += len(line_text)
        with open(os.path.join(sub, f"file{f:03}.rs"), "w") as fh:
            fh.write("".join(text))
        count += 1
bins = os.path.join(root, "bin")
os.makedirs(bins, exist_ok=True)
for b in range(100):
    with open(os.path.join(bins, f"blob{b:03}.bin"), "wb") as fh:
        fh.write(rng.randbytes(1536 * 1024))
    count += 1
print(f"generated {count} files under {root}")

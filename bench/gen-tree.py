#!/usr/bin/env python3
"""Generate a deterministic build context for the build benchmark.

About 20,000 files and 300 MB: source-like text files (compressible) spread
over nested directories, plus incompressible binaries. Same seed, same bytes.
Usage: gen-tree.py DEST [--files N] [--binary-mb M] [--text-mb T]
"""
import argparse
import os
import random

WORDS = (
    "fn let mut struct impl pub use mod match if else for while loop return self "
    "Result Option Some None Ok Err String Vec HashMap usize u64 i32 bool true false "
    "config path file error context build layer image stage cache digest parse token "
    "println! format! assert_eq! write read open close buffer stream chunk hash"
).split()


def text_blob(rng, size):
    out = []
    n = 0
    indent = 0
    while n < size:
        line = "    " * indent + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12)))
        if line.endswith(("if", "for", "while", "loop", "impl", "fn")):
            line += " {"
            indent = min(indent + 1, 5)
        elif indent and rng.random() < 0.2:
            indent -= 1
            line += " }"
        else:
            line += ";"
        out.append(line)
        n += len(line) + 1
    return ("\n".join(out) + "\n").encode()[:size]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dest")
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--binary-mb", type=int, default=200)
    ap.add_argument("--text-mb", type=int, default=100)
    args = ap.parse_args()
    rng = random.Random(20261123)
    n_bin = 150
    n_text = args.files - n_bin
    text_avg = args.text_mb * 1024 * 1024 // n_text
    bin_size = args.binary_mb * 1024 * 1024 // n_bin
    os.makedirs(args.dest, exist_ok=True)
    for i in range(n_text):
        d = os.path.join(args.dest, "src", f"m{i % 40:02d}", f"s{(i // 40) % 25:02d}")
        os.makedirs(d, exist_ok=True)
        size = max(64, int(rng.expovariate(1 / text_avg)))
        with open(os.path.join(d, f"file{i:05d}.rs"), "wb") as f:
            f.write(text_blob(rng, size))
    bdir = os.path.join(args.dest, "assets")
    os.makedirs(bdir, exist_ok=True)
    for i in range(n_bin):
        with open(os.path.join(bdir, f"blob{i:03d}.bin"), "wb") as f:
            f.write(rng.randbytes(bin_size))


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Hostile Dockerfiles through `rbuild check` (release build): N distinct ENV
# lines, N chained ARGs, a 9,000-deep `${a:-` and an ARG doubling chain.
# Prints wall and CPU time (user + system: steadier on a busy machine) and
# peak RSS per file. Results: docs/benchmarks.md
# ("Hostile input"). Usage: bench/parse/hostile.sh [RBUILD_BINARY]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-$root/target/release/rbuild}"
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build --release --bin rbuild)
fi
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" <<'PY'
import sys
d = sys.argv[1]
def w(name, text):
    open(f"{d}/{name}", "w").write(text)
for n in (2500, 5000, 10000, 50000):
    w(f"env-{n}", "FROM scratch\n" + "".join(f"ENV A{i}={i}\n" for i in range(n)))
for n in (10000, 50000):
    w(f"arg-{n}", "FROM scratch\nARG B0=x\n"
      + "".join(f"ARG B{i}=${{B{i-1}}}\n" for i in range(1, n)) + "RUN echo $B1\n")
w("nested-9000", "FROM scratch\nENV X=" + "${a:-" * 9000 + "\n")
w("doubling-40", "FROM scratch\nARG A0=xxxxxxxxxxxxxxxx\n"
  + "".join(f"ARG A{i}=${{A{i-1}}}${{A{i-1}}}\n" for i in range(1, 41)))
PY
printf '%-14s %8s %8s %10s %s\n' file wall-s cpu-s peak-KiB exit
for f in env-2500 env-5000 env-10000 env-50000 arg-10000 arg-50000 nested-9000 doubling-40; do
  start=$(date +%s.%N)
  set +e
  python3 - "$bin" "$dir/$f" > "$dir/out" <<'PY'
import resource, subprocess, sys
p = subprocess.run([sys.argv[1], "check", "-f", sys.argv[2], "."],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_maxrss, r.ru_utime + r.ru_stime, p.returncode)
PY
  set -e
  end=$(date +%s.%N)
  read -r rss cpu code < "$dir/out"
  printf '%-14s %8.3f %8.3f %10s %s\n' "$f" "$(echo "$end - $start" | bc)" "$cpu" "$rss" "$code"
done

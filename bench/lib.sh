# Shared helpers for the benchmark scripts (sourced, not run).

# seconds and peak RSS (MB) of a command: "SECS RSS_MB"; fails loudly.
measure() {
  local tf="$BENCH_WORK/last.time"
  if ! /usr/bin/time -o "$tf" -f '%e %M' "$@" >/dev/null 2>"$BENCH_WORK/last.err"; then
    echo "command failed: $*" >&2; tail -20 "$BENCH_WORK/last.err" >&2; return 1
  fi
  awk '{printf "%s %.0f", $1, $2/1024}' "$tf"
}
secs() { cut -d' ' -f1 <<<"$1"; }
rss() { cut -d' ' -f2 <<<"$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else print "n/a"}'; }

# Start a dockerd (BuildKit inside) with its own state under $1; sets
# DOCKER_HOST and DOCKERD_PID. Installs docker.io when missing.
start_dockerd() {
  local dd=$1
  if ! command -v dockerd >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null 2>&1 || return 1
  fi
  rm -rf "$dd"; mkdir -p "$dd"
  echo "{\"iptables\": false, \"bridge\": \"none\", \"insecure-registries\": [${2:-}]}" > "$dd/daemon.json"
  dockerd --config-file "$dd/daemon.json" --data-root "$dd/data" --exec-root "$dd/exec" \
    --pidfile "$dd/pid" -H "unix://$dd/docker.sock" >"$dd/log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 100); do [ -S "$dd/docker.sock" ] && break; sleep 0.2; done
  export DOCKER_HOST="unix://$dd/docker.sock" DOCKER_BUILDKIT=1
  /usr/bin/docker version >/dev/null 2>&1
}

stop_dockerd() {
  [ -n "${DOCKERD_PID:-}" ] && kill "$DOCKERD_PID" 2>/dev/null && wait "$DOCKERD_PID" 2>/dev/null
  unset DOCKER_HOST DOCKERD_PID
}

# Start docker-registry on a free loopback port with storage under $1; sets
# REGISTRY_PORT and REGISTRY_PID (call it directly, not in $(...)).
start_registry() {
  local dir=$1
  REGISTRY_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$dir"
  cat > "$dir/config.yml" <<YML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:$REGISTRY_PORT
YML
  docker-registry serve "$dir/config.yml" >"$dir/log" 2>&1 &
  REGISTRY_PID=$!
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$REGISTRY_PORT") 2>/dev/null && break; sleep 0.1; done
}

# Mean seconds of a fast command over repeated runs (hyperfine), as "SECS".
mean_secs() {
  hyperfine -N -w 2 -r "${RUNS:-10}" --export-json "$BENCH_WORK/hf.json" "$*" >/dev/null 2>&1 || return 1
  python3 -c 'import json,sys; print("%.3f" % json.load(open(sys.argv[1]))["results"][0]["mean"])' "$BENCH_WORK/hf.json"
}

# --- helpers for the side-by-side scripts (bench/peers, bench/scaling, bench/real)

# record NAME CMD...: runs CMD (output to $BENCH_WORK/NAME.log) and appends
# "NAME wall_s cpu_s rss_MB" to $BENCH_WORK/rows. CPU is the command's own
# user+sys (with its waited-for children); when BENCH_CPU_CG names a cpuacct
# cgroup (a daemon's, see cg_adopt), that cgroup's CPU during the command is
# added, so a `docker build` counts dockerd's work, not only the client's.
record() {
  local name=$1; shift
  local tf="$BENCH_WORK/last.time" cg0=0 cg1=0
  [ -n "${BENCH_CPU_CG:-}" ] && cg0=$(cat "$BENCH_CPU_CG/cpuacct.usage")
  if ! /usr/bin/time -o "$tf" -f '%e %U %S %M' "$@" >"$BENCH_WORK/$name.log" 2>&1; then
    echo "command failed ($name): $*" >&2; tail -20 "$BENCH_WORK/$name.log" >&2; return 1
  fi
  [ -n "${BENCH_CPU_CG:-}" ] && cg1=$(cat "$BENCH_CPU_CG/cpuacct.usage")
  awk -v n="$name" -v c0="$cg0" -v c1="$cg1" \
    '{printf "%s %.3f %.3f %.0f\n", n, $1, $2 + $3 + (c1 - c0) / 1e9, $4 / 1024}' "$tf" \
    | tee -a "$BENCH_WORK/rows" >&2
}

# med NAME [COL]: median of column COL (2 wall, 3 cpu, 4 rss; default 2) of
# the rows recorded as NAME; "-" when there are none.
med() {
  awk -v n="$1" -v c="${2:-2}" '$1 == n {print $c}' "$BENCH_WORK/rows" | sort -g \
    | awk '{a[NR]=$1} END{ if (NR) print a[int((NR+1)/2)]; else print "-" }'
}
# maxof NAME-PREFIX COL: the largest value of COL over rows whose name starts so.
maxof() {
  awk -v p="$1" -v c="$2" 'index($1, p) == 1 && $c > m {m = $c} END{print m + 0}' "$BENCH_WORK/rows"
}
load() { cut -d' ' -f1-3 /proc/loadavg; }
# med_of: the median of the numbers on stdin (spaces or newlines between).
med_of() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# cache_rig BIN: bench/cache's one-file rig in $work (made empty by the
# caller): the big context in $work/ctx, its first .rs file as $f (a copy in
# $work/orig), a docker-registry ($reg; killed on exit), and the seed build
# with BIN exporting the registry cache $cache and pushing $reg/app:r.
cache_rig() {
  mkdir -p "$work/ctx"
  big_context "$work/ctx"
  f=$(cd "$work/ctx/tree" && find . -type f -name '*.rs' | sort | sed -n 1p)
  cp "$work/ctx/tree/$f" "$work/orig"
  start_registry "$work/registry"
  trap 'kill "$REGISTRY_PID" 2>/dev/null || true' EXIT
  reg="127.0.0.1:$REGISTRY_PORT"
  cache="type=registry,ref=$reg/app:rcache"
  "$1" --root "$work/seed" build --progress plain --cache-to "$cache,mode=max" \
    --push -t "$reg/app:r" "$work/ctx" >"$work/seed.log" 2>&1
}

# cg_adopt PID...: moves the processes into a new cpuacct cgroup (v1) and sets
# BENCH_CPU_CG; their future children inherit it. cg_drop removes it.
cg_adopt() {
  local base=/sys/fs/cgroup/cpuacct
  [ -d "$base" ] || return 0
  BENCH_CPU_CG="$base/rbuild-bench-$$"
  mkdir -p "$BENCH_CPU_CG"
  local p
  for p in "$@"; do echo "$p" > "$BENCH_CPU_CG/cgroup.procs" 2>/dev/null || true; done
  export BENCH_CPU_CG
}
cg_drop() {
  [ -n "${BENCH_CPU_CG:-}" ] || return 0
  local p
  while read -r p; do echo "$p" > /sys/fs/cgroup/cpuacct/cgroup.procs 2>/dev/null || true; done \
    < "$BENCH_CPU_CG/cgroup.procs"
  rmdir "$BENCH_CPU_CG" 2>/dev/null || true
  unset BENCH_CPU_CG
}
# pids of a process and all its descendants
tree_pids() {
  local p=$1 c
  echo "$p"
  for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do tree_pids "$c"; done
}

# --- this VM's filesystem: deletions slow the next file creations ---------------
# On ext4 without a journal the kernel skips inodes freed in the last 60-360 s
# when it allocates new ones (`recently_deleted()` in ext4's ialloc.c), one
# inode-table lookup per skipped inode: right after a 40,000-file tree is
# deleted, every new file costs about a millisecond instead of microseconds
# (measured: a cold `big` build 3 s -> 9-19 s of system time, 20 RUN steps
# 0.22 -> 0.55 s). A deletion in the middle of a benchmark would bill the
# next builder for the previous one's cleanup, so the side-by-side scripts
# never delete while they measure: `trash` renames (O(1), no inode is freed)
# and `empty_trash` deletes everything at the end; `settle` waits, before
# the first measurement, until creating files is as cheap as on a quiet disk.

# trash PATH...: moves each existing PATH into $BENCH_TRASH (same filesystem).
trash() {
  local p
  : "${BENCH_TRASH:=$BENCH_WORK.trash}"
  mkdir -p "$BENCH_TRASH"
  for p in "$@"; do
    [ -e "$p" ] && mv "$p" "$(mktemp -u "$BENCH_TRASH/t.XXXXXX")"
  done
  return 0
}
empty_trash() { rm -rf "${BENCH_TRASH:-$BENCH_WORK.trash}"; }

# fs_canary: milliseconds to create 40 dirs of 50 empty files (about 30 on a
# settled disk here; 1,000-1,800 after a big delete). The files stay in the
# trash: deleting them would itself slow the next canary down.
fs_canary() {
  local d
  : "${BENCH_TRASH:=$BENCH_WORK.trash}"
  mkdir -p "$BENCH_TRASH"
  d=$(mktemp -d "$BENCH_TRASH/canary.XXXXXX")
  python3 - "$d" <<'CANARY'
import os, sys, time
d = sys.argv[1]; t = time.monotonic()
for j in range(40):
    p = os.path.join(d, "d%d" % j); os.mkdir(p)
    for i in range(50):
        os.close(os.open(os.path.join(p, "f%d" % i), os.O_CREAT | os.O_WRONLY, 0o644))
print(int((time.monotonic() - t) * 1000))
CANARY
}

# settle: waits (up to SETTLE_MAX seconds, default 600) until fs_canary is
# under SETTLE_MS (default 50) twice in a row, 30 s apart (one low reading
# at 81 ms still preceded a run whose cold builds were 2.5x slow); prints
# the canary to stderr and sets SETTLED_MS for the report.
settle() {
  local waited=0 ms good=0
  while :; do
    ms=$(fs_canary)
    if [ "$ms" -le "${SETTLE_MS:-50}" ]; then good=$((good + 1)); else good=0; fi
    [ "$good" -ge 2 ] && break
    [ "$waited" -ge "${SETTLE_MAX:-600}" ] && { echo "fs not settled after ${waited} s (canary $ms ms); measuring anyway" >&2; break; }
    echo "fs canary $ms ms: waiting…" >&2
    sleep 30; waited=$((waited + 30))
  done
  SETTLED_MS=$ms
  echo "fs canary: $ms ms for 2,000 files" >&2
}

# big_context DIR: the `big` scenario's context (bench/cache, bench/peers'
# shape): a gen-tree.py tree of FILES files (BINARY_MB + TEXT_MB), busybox,
# and a Dockerfile with a busybox base, `COPY tree .` and a RUN after it.
big_context() {
  mkdir -p "$1"
  python3 "$repo/bench/gen-tree.py" "$1/tree" --files "${FILES:-20000}" \
    --binary-mb "${BINARY_MB:-200}" --text-mb "${TEXT_MB:-100}" >/dev/null
  cp /bin/busybox "$1/busybox"
  cat > "$1/Dockerfile" <<'DF'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
WORKDIR /app
COPY tree .
RUN find . | wc -l > /files
DF
}

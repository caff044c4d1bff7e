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

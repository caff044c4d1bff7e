#!/usr/bin/env bash
# Per-step cost of rbuild's RUN sandbox: N trivial `true` steps on a busybox
# overlay rootfs (fresh upper dir each), as root (network none and host) and,
# when run as root, rootless as user rbuild-sbx (created by the sandbox
# tests). Then the same N steps with `runc run` on a busybox bundle and with
# `buildah run` (own storage under a temp dir) as references.
#   STEPS=20 bench/run-steps/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-20}

flock /work/cargo.lock cargo test --release --no-run --test integration 2>/dev/null \
  || cargo test --release --no-run --test integration
BIN=$(cargo test --release --no-run --test integration --message-format=json 2>/dev/null \
  | grep -o '"executable":"[^"]*integration[^"]*"' | tail -1 | cut -d'"' -f4)

bench() { "$@" "$BIN" --ignored --exact sandbox_bench::bench_trivial_run_steps --nocapture 2>&1 | grep '^BENCH' | sed 's/^BENCH //'; }

echo "== rbuild sandbox, $STEPS steps of RUN true"
BENCH_STEPS=$STEPS BENCH_NETWORK=none bench env
BENCH_STEPS=$STEPS BENCH_NETWORK=host bench env
if [ "$(id -u)" -eq 0 ] && id rbuild-sbx >/dev/null 2>&1; then
  (cd /tmp && bench setpriv --reuid=rbuild-sbx --regid="$(id -g rbuild-sbx)" --clear-groups \
    env BENCH_STEPS="$STEPS" BENCH_NETWORK=none)
fi

if command -v runc >/dev/null && [ "$(id -u)" -eq 0 ]; then
  echo "== runc run, $STEPS steps of true (plain rootfs dir, no overlay)"
  B=$(mktemp -d)
  trap 'rm -rf "$B"' EXIT
  mkdir -p "$B/rootfs/bin"
  cp /bin/busybox "$B/rootfs/bin/busybox"
  for a in sh true; do ln -s busybox "$B/rootfs/bin/$a"; done
  (cd "$B" && runc spec)
  python3 - "$B/config.json" <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/true"]
c["process"].pop("rlimits", None)
json.dump(c, open(p, "w"))
PY
  start=$(date +%s%N)
  for i in $(seq "$STEPS"); do runc run --bundle "$B" "rbuild-bench-$$-$i" </dev/null >/dev/null; done
  end=$(date +%s%N)
  echo "{\"steps\":$STEPS,\"runc_mean_ms\":$(( (end - start) / STEPS / 1000000 ))}"
fi

if command -v buildah >/dev/null && [ "$(id -u)" -eq 0 ]; then
  echo "== buildah run, $STEPS steps of true (own storage, vfs, runc)"
  R=$(mktemp -d)
  B=(buildah --root "$R/root" --runroot "$R/run" --storage-driver vfs)
  ctr=$("${B[@]}" from scratch | tail -1)
  "${B[@]}" copy "$ctr" /bin/busybox /bin/busybox >/dev/null
  start=$(date +%s%N)
  for _ in $(seq "$STEPS"); do "${B[@]}" run --runtime runc --network none "$ctr" /bin/busybox true; done
  end=$(date +%s%N)
  "${B[@]}" rm "$ctr" >/dev/null
  rm -rf "$R"
  echo "{\"steps\":$STEPS,\"buildah_run_mean_ms\":$(( (end - start) / STEPS / 1000000 ))}"
fi

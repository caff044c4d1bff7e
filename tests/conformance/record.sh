#!/usr/bin/env bash
# Record BuildKit's result for every conformance case (or the cases named as
# arguments): build each with dockerd's BuildKit, `docker save` it, then let
# the Rust test (record mode) turn each docker-archive into the case's
# expected.json. Needs a dockerd started by hand (README.md) and DOCKER_HOST
# pointing at it; the comparison run (`cargo test --test integration conformance::`) does not.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${DOCKER_HOST:?start dockerd by hand and export DOCKER_HOST (tests/conformance/README.md)}"
DOCKER=/usr/bin/docker
RBUILD=${RBUILD:-target/debug/rbuild}
OUT=${OUT:-$(mktemp -d /tmp/conformance-record.XXXXXX)}
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The context as the test prepares it: files 0644 (0755 when executable),
# dirs 0755, then the case's setup.sh run inside it (links, modes, archives).
prepare() {
  local case=$1 dst=$2
  mkdir -p "$dst"
  if [ -d "$case/context" ]; then cp -R "$case/context/." "$dst/"; fi
  find "$dst" -type d -exec chmod 0755 {} +
  find "$dst" -type f -perm -u+x -exec chmod 0755 {} +
  find "$dst" -type f ! -perm -u+x -exec chmod 0644 {} +
  if [ -f "$case/setup.sh" ]; then (cd "$dst" && umask 022 && sh "$OLDPWD/$case/setup.sh"); fi
}

# The base image: built by rbuild from Debian's static busybox, loaded into
# dockerd as the same bytes.
cargo build --quiet
cp -R tests/conformance/base "$work/base"
cp /bin/busybox "$work/base/busybox"
SOURCE_DATE_EPOCH=0 "$RBUILD" --root "$work/store" build --progress plain -t conformance-base:1 "$work/base" >/dev/null 2>&1
"$RBUILD" --root "$work/store" save conformance-base:1 -o "$OUT/base.tar"
"$DOCKER" load -i "$OUT/base.tar" >/dev/null
echo "dockerd $("$DOCKER" version --format '{{.Server.Version}}') (BuildKit built in), busybox-static $(dpkg-query -W -f='${Version}' busybox-static)" > "$OUT/version"

if [ $# -gt 0 ]; then cases=("$@"); else cases=($(ls tests/conformance/cases)); fi
for name in "${cases[@]}"; do
  case=tests/conformance/cases/$name
  ctx="$work/ctx/$name"
  prepare "$case" "$ctx"
  args=()
  if [ -f "$case/args" ]; then mapfile -t args < "$case/args"; fi
  rm -f "$OUT/$name.tar" "$OUT/$name.failed"
  if (cd "$ctx" && DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain \
        -t "conformance-case-$name:1" "${args[@]}" .) > "$OUT/$name.log" 2>&1; then
    "$DOCKER" save "conformance-case-$name:1" -o "$OUT/$name.tar"
    echo "recorded $name"
  else
    touch "$OUT/$name.failed"
    echo "recorded $name (build fails)"
  fi
done

RBUILD_CONFORMANCE_RECORD="$OUT" cargo test --quiet --test integration conformance::record_buildkit_snapshots -- --ignored --exact --test-threads=1
echo "docker archives and logs kept in $OUT"

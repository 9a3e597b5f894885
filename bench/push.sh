#!/usr/bin/env bash
# Benchmarks a push of a ~130 MB, 4-layer image to a new repository of a loopback registry:
# the release dagger-engine (Container.publish) vs `skopeo copy` from an OCI layout (with its
# blob-info cache deleted before each run), in the same run. See bench/README.md.
# Knobs (environment): BENCH_RUNS (5), BENCH_WARMUP (1), BENCH_DISK=loop|tmpfs (loop),
# BENCH_DISK_SIZE (20G), BENCH_TOOLS (engine,skopeo),
# LARGE_SOURCE=synthetic|debootstrap (synthetic), DEBIAN_MIRROR.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$(pwd)

if [[ "$(id -u)" -ne 0 ]]; then
    echo "bench/push.sh must run as root: the engine mounts filesystems. Try: sudo $0" >&2
    exit 1
fi

# Bench-only packages (the test suite's live in scripts/install-deps.sh).
BENCH_PACKAGES=(skopeo umoci docker-registry python3 busybox-static e2fsprogs curl)
LARGE_SOURCE=${LARGE_SOURCE:-synthetic}
[[ $LARGE_SOURCE == debootstrap ]] && BENCH_PACKAGES+=(debootstrap)
missing=()
for p in "${BENCH_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "bench/push.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

cargo build --release -p dagger-engine -p dagger-integration-tests --bins

# The image, built once per script version and source, cached under target/bench/.
SCRIPT=bench/scripts/build-large-image.sh
KEY=$( (cat "$SCRIPT"; echo "$LARGE_SOURCE") | sha256sum | cut -c1-16)
CACHE=$REPO/target/bench/large-image
IMAGE=$CACHE/$LARGE_SOURCE-$KEY
if [[ ! -f $IMAGE/.complete ]]; then
    mkdir -p "$CACHE"
    rm -rf "$IMAGE.tmp"
    echo "bench/push.sh: building the image into $IMAGE (LARGE_SOURCE=$LARGE_SOURCE)"
    LARGE_SOURCE=$LARGE_SOURCE bash "$SCRIPT" "$IMAGE.tmp"
    touch "$IMAGE.tmp/.complete"
    rm -rf "$IMAGE"
    mv "$IMAGE.tmp" "$IMAGE"
fi

# The engine's state on one fresh filesystem: a journaled ext4 loop image, or a tmpfs.
BENCH_DISK=${BENCH_DISK:-loop}
MNT=/var/tmp/dagger-bench-push.$$
DISK_IMG=/var/tmp/dagger-bench-push.$$.ext4
cleanup() {
    case $BENCH_DISK in
        loop) bash bench/scripts/state-disk.sh down "$MNT" "$DISK_IMG" || true ;;
        tmpfs) umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true ;;
    esac
    rmdir "$MNT" 2>/dev/null || true
}
trap cleanup EXIT
case $BENCH_DISK in
    loop) bash bench/scripts/state-disk.sh up "$MNT" "${BENCH_DISK_SIZE:-20G}" "$DISK_IMG" ;;
    tmpfs)
        mkdir -p "$MNT"
        mount -t tmpfs -o "size=${BENCH_DISK_SIZE:-12G},mode=0755" tmpfs "$MNT"
        echo "bench/push.sh: $MNT on a fresh tmpfs (${BENCH_DISK_SIZE:-12G})"
        ;;
    *) echo "bench/push.sh: BENCH_DISK must be loop or tmpfs, not '$BENCH_DISK'" >&2; exit 1 ;;
esac

BENCH_LAYOUT=$IMAGE/oci BENCH_TAG=large BENCH_STATE_PARENT=$MNT BENCH_DISK=$BENCH_DISK \
    target/release/bench-push target/release/dagger-engine

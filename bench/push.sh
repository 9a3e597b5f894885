#!/usr/bin/env bash
# Benchmarks a push of a ~130 MB, 4-layer image to a new repository of a loopback registry:
# the release dagger-engine (Container.publish) vs `skopeo copy` from an OCI layout (with its
# blob-info cache deleted before each run), in the same run. See bench/README.md.
# Knobs (environment): BENCH_RUNS (5), BENCH_WARMUP (1), BENCH_DISK=loop|tmpfs (loop),
# BENCH_DISK_SIZE (20G), BENCH_TOOLS (engine,skopeo),
# LARGE_SOURCE=synthetic|debootstrap (synthetic), DEBIAN_MIRROR.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_NAME=bench/push.sh
source bench/scripts/common.sh

bench_require_root "the engine mounts filesystems"

BENCH_PACKAGES=(skopeo umoci docker-registry python3 busybox-static e2fsprogs curl)
LARGE_SOURCE=${LARGE_SOURCE:-synthetic}
[[ $LARGE_SOURCE == debootstrap ]] && BENCH_PACKAGES+=(debootstrap)
bench_install_packages "${BENCH_PACKAGES[@]}"

bench_build

# The image, built once per script version and source, cached under target/bench/.
bench_large_image

# The engine's state on one fresh filesystem: a journaled ext4 loop image, or a tmpfs.
BENCH_DISK=${BENCH_DISK:-loop}
MNT=/var/tmp/dagger-bench-push.$$
DISK_IMG=/var/tmp/dagger-bench-push.$$.ext4
trap bench_disk_down EXIT
bench_disk_up 20G 12G

BENCH_LAYOUT=$IMAGE/oci BENCH_TAG=large BENCH_STATE_PARENT=$MNT BENCH_DISK=$BENCH_DISK \
    target/release/bench-push target/release/dagger-engine

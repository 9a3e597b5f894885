#!/usr/bin/env bash
# Benchmarks container start latency: the release dagger-engine's withExec(["/bin/true", n])
# through GraphQL vs raw `runc run` of a umoci bundle vs `podman run --rm` (--network=none and
# the default CNI network), the same busybox image, in the same run. See bench/README.md.
# Knobs (environment): BENCH_RUNS (30), BENCH_WARMUP (3), BENCH_DISK=tmpfs|loop (tmpfs),
# BENCH_DISK_SIZE, BENCH_TOOLS (engine,runc,podman-none,podman), BENCH_NICE (unset: inherit).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BENCH_NAME=bench/exec.sh
source bench/scripts/common.sh

bench_require_root "the engine, runc and podman create namespaces, cgroups and mounts"

# Bench-only packages (the test suite's live in scripts/install-deps.sh). containernetworking-
# plugins and iptables give podman its default (CNI bridge) network.
BENCH_PACKAGES=(podman umoci skopeo runc tini docker-registry busybox-static python3 nftables
    containernetworking-plugins iptables e2fsprogs)
bench_install_packages "${BENCH_PACKAGES[@]}"

bench_build

# All state (engine root, runc bundle and --root, podman storage) on one fresh filesystem: a
# tmpfs (default) or a journaled ext4 loop image. Short path: podman's runroot goes there too
# and must stay under 50 characters.
BENCH_DISK=${BENCH_DISK:-tmpfs}
MNT=/var/tmp/dbx.$$
DISK_IMG=/var/tmp/dbx.$$.ext4

# podman's first run on its default network creates the bridge cni-podman0, iptables chains
# (CNI-FORWARD, CNI-ADMIN) and CNI's state dir /var/lib/cni; remove them afterwards unless they
# were already there.
had_bridge=0
ip link show cni-podman0 >/dev/null 2>&1 && had_bridge=1
had_chains=0
iptables -S CNI-FORWARD >/dev/null 2>&1 && had_chains=1
had_cni_state=0
[[ -e /var/lib/cni ]] && had_cni_state=1
# podman's cgroupfs parent, when the bench cannot give it one of its own (no v1 cpuacct).
had_libpod_parent=0
compgen -G '/sys/fs/cgroup/*/libpod_parent' >/dev/null && had_libpod_parent=1

cleanup() {
    bench_disk_down
    if ((!had_bridge)) && ip link show cni-podman0 >/dev/null 2>&1; then
        ip link delete cni-podman0 || true
    fi
    if ((!had_chains)) && iptables -S CNI-FORWARD >/dev/null 2>&1; then
        iptables -D FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD 2>/dev/null || true
        for chain in CNI-FORWARD CNI-ADMIN; do
            iptables -F "$chain" 2>/dev/null || true
            iptables -X "$chain" 2>/dev/null || true
        done
    fi
    ((had_cni_state)) || rm -rf /var/lib/cni
    if ((!had_libpod_parent)); then
        for h in /sys/fs/cgroup/*/libpod_parent; do
            [[ -d $h ]] && find "$h" -depth -type d -exec rmdir {} \; 2>/dev/null
        done
    fi
    return 0
}
trap cleanup EXIT
bench_disk_up 4G 2G

# BENCH_NICE (e.g. -10) runs the bench, and so every tool it starts, at that priority: on a
# machine busy with other work, that keeps the tools' many wake-ups from queueing behind it.
NICE=()
[[ -n ${BENCH_NICE:-} ]] && NICE=(nice -n "$BENCH_NICE")
BENCH_STATE_PARENT=$MNT BENCH_DISK=$BENCH_DISK "${NICE[@]}" target/release/bench-exec target/release/dagger-engine

# Shared by the bench scripts (bench/*.sh), which source it after `cd`-ing to the repository
# root and setting BENCH_NAME (e.g. bench/pull.sh) for their messages.

# Exits unless running as root; $1 says why root is needed.
bench_require_root() {
    if [[ "$(id -u)" -ne 0 ]]; then
        echo "$BENCH_NAME must run as root: $1. Try: sudo $0" >&2
        exit 1
    fi
}

# Installs the Debian packages named as arguments that are not installed yet (bench-only
# packages: the test suite's live in scripts/install-deps.sh).
bench_install_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "$BENCH_NAME: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# The release engine and the bench binaries.
bench_build() {
    cargo build --release -p dagger-engine -p dagger-integration-tests --bins
}

# Builds the large image with bench/scripts/build-large-image.sh once per script version and
# LARGE_SOURCE, cached under target/bench/large-image/; sets IMAGE to its directory.
bench_large_image() {
    local script=bench/scripts/build-large-image.sh key cache
    key=$( (cat "$script"; echo "$LARGE_SOURCE") | sha256sum | cut -c1-16)
    cache=$(pwd)/target/bench/large-image
    IMAGE=$cache/$LARGE_SOURCE-$key
    if [[ ! -f $IMAGE/.complete ]]; then
        mkdir -p "$cache"
        rm -rf "$IMAGE.tmp"
        echo "$BENCH_NAME: building the image into $IMAGE (LARGE_SOURCE=$LARGE_SOURCE)"
        LARGE_SOURCE=$LARGE_SOURCE bash "$script" "$IMAGE.tmp"
        touch "$IMAGE.tmp/.complete"
        rm -rf "$IMAGE"
        mv "$IMAGE.tmp" "$IMAGE"
    fi
}

# Puts $MNT on a fresh filesystem by BENCH_DISK: `loop` (a journaled ext4 image at $DISK_IMG,
# BENCH_DISK_SIZE or $1 big) or `tmpfs` (BENCH_DISK_SIZE or $2 big).
bench_disk_up() {
    case $BENCH_DISK in
        loop) bash bench/scripts/state-disk.sh up "$MNT" "${BENCH_DISK_SIZE:-$1}" "$DISK_IMG" ;;
        tmpfs)
            mkdir -p "$MNT"
            mount -t tmpfs -o "size=${BENCH_DISK_SIZE:-$2},mode=0755" tmpfs "$MNT"
            echo "$BENCH_NAME: $MNT on a fresh tmpfs (${BENCH_DISK_SIZE:-$2})"
            ;;
        *) echo "$BENCH_NAME: BENCH_DISK must be loop or tmpfs, not '$BENCH_DISK'" >&2; exit 1 ;;
    esac
}

# Undoes bench_disk_up (for an EXIT trap; never fails).
bench_disk_down() {
    case $BENCH_DISK in
        loop) bash bench/scripts/state-disk.sh down "$MNT" "$DISK_IMG" || true ;;
        tmpfs) umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true ;;
    esac
    rmdir "$MNT" 2>/dev/null || true
}

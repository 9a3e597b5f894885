#!/usr/bin/env bash
# Builds the pull benchmark's image: a ~130 MB (compressed), 4-layer OCI image, with umoci.
# Ported from shared/reference/scripts/build-large-image.sh.
#
# Usage: build-large-image.sh <outdir>   → OCI layout <outdir>/oci, tag "large"
#
#   layer 1  a base rootfs (see LARGE_SOURCE)                ~95 MB gz, ~200 MB, ~6-7k entries
#   layer 2  8 × 4 MiB of random data in /opt/random          ~33.6 MB (incompressible)
#   layer 3  1000 × 4 KiB text files in /opt/small            ~26 KB gz (per-file overhead)
#   layer 4  a whiteout of /opt/small/f1.txt                  ~100 B
#   config   Cmd ["/bin/sh"], PATH, linux/amd64
#
# LARGE_SOURCE (environment):
#   synthetic (default)  no network at all: a ~200 MB tree copied from this machine's /usr
#                        (sorted, size-capped slices of /usr/lib/x86_64-linux-gnu, /usr/bin and
#                        /usr/share, so binaries, libraries and many small text files, like a
#                        distribution's base) plus /bin/busybox as /bin/sh.
#   debootstrap          `debootstrap --variant=minbase bookworm` from DEBIAN_MIRROR (default
#                        http://deb.debian.org/debian; needs the debootstrap package and that
#                        mirror). The rootfs is kept in <outdir>/rootfs for the next build.
# Needs: umoci, python3, busybox-static (and debootstrap for LARGE_SOURCE=debootstrap).
set -euo pipefail
OUT=${1:?usage: build-large-image.sh <outdir>}
SRC=${LARGE_SOURCE:-synthetic}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
need=(umoci python3)
[[ $SRC == synthetic ]] && need+=(/bin/busybox)
[[ $SRC == debootstrap ]] && need+=(debootstrap)
for bin in "${need[@]}"; do
  command -v "$bin" >/dev/null || { echo "build-large-image.sh: $bin is missing" >&2; exit 1; }
done
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
L="$OUT/oci"; ROOT="$OUT/rootfs"
rm -rf "$L"
export SOURCE_DATE_EPOCH=0

case $SRC in
  debootstrap)
    if [[ ! -d $ROOT/usr ]]; then
      rm -rf "$ROOT"
      echo "build-large-image.sh: debootstrap --variant=minbase bookworm from $MIRROR (~30 s)" >&2
      if ! debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$OUT/debootstrap.log" 2>&1; then
        echo "build-large-image.sh: debootstrap failed, see $OUT/debootstrap.log" >&2
        exit 1
      fi
    fi
    ;;
  synthetic)
    rm -rf "$ROOT"; mkdir -p "$ROOT"
    # Sorted walks with byte budgets, so the same machine always yields the same tree.
    python3 - "$ROOT" <<'EOF'
import os, shutil, stat, sys
root = sys.argv[1]
# (source dir, byte budget, largest file taken)
plan = [
    ("/usr/lib/x86_64-linux-gnu", 110 << 20, 16 << 20),
    ("/usr/bin", 45 << 20, 16 << 20),
    ("/usr/share", 45 << 20, 256 << 10),
]
files = links = total = 0
for src, budget, largest in plan:
    used = 0
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        rel = os.path.relpath(dirpath, "/")
        for name in sorted(filenames):
            if used >= budget:
                break
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            dest = os.path.join(root, rel, name)
            if stat.S_ISLNK(st.st_mode):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.symlink(os.readlink(path), dest)
                links += 1
            elif stat.S_ISREG(st.st_mode) and st.st_size <= largest and os.access(path, os.R_OK):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                shutil.copy2(path, dest)
                used += st.st_size
                files += 1
        if used >= budget:
            break
    total += used
print(f"build-large-image.sh: synthetic rootfs: {files} files, {links} symlinks, {total / 1e6:.1f} MB", file=sys.stderr)
EOF
    mkdir -p "$ROOT"/{bin,etc,tmp,root,var}
    chmod 1777 "$ROOT/tmp"
    cp /bin/busybox "$ROOT/bin/busybox"
    ln -s busybox "$ROOT/bin/sh"; ln -s busybox "$ROOT/bin/true"
    echo 'root:x:0:0:root:/root:/bin/sh' >"$ROOT/etc/passwd"
    ;;
  *) echo "build-large-image.sh: LARGE_SOURCE must be synthetic or debootstrap, not '$SRC'" >&2; exit 1 ;;
esac

umoci init --layout "$L"
umoci new --image "$L:large"
# layer 1: the base rootfs (umoci computes the tar + gzip)
umoci insert --image "$L:large" "$ROOT" /
# layer 2: 32 MiB of incompressible data in 8 files
T="$OUT/l2"; rm -rf "$T"; mkdir -p "$T"
for i in $(seq 1 8); do head -c $((4 * 1024 * 1024)) /dev/urandom >"$T/rand$i.bin"; done
umoci insert --image "$L:large" "$T" /opt/random
# layer 3: many small files (1000 × 4 KiB text): per-file overhead
T="$OUT/l3"; rm -rf "$T"; mkdir -p "$T"
python3 -c 'import sys
for i in range(1, 1001): open(f"{sys.argv[1]}/f{i}.txt", "w").write((f"line {i}\n" * 1000)[:4096])' "$T"
umoci insert --image "$L:large" "$T" /opt/small
# layer 4: a whiteout of a file from layer 3
umoci insert --image "$L:large" --whiteout /opt/small/f1.txt
umoci config --image "$L:large" --config.cmd /bin/sh --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  --os linux --architecture amd64
rm -rf "$OUT/l2" "$OUT/l3"
# The synthetic tree is cheap to remake; a debootstrap one is kept for the next build.
[[ $SRC == synthetic ]] && rm -rf "$ROOT"
umoci gc --layout "$L"
echo "build-large-image.sh: $(du -sh "$L" | cut -f1) in $L (LARGE_SOURCE=$SRC)" >&2

#!/usr/bin/env bash
# Puts a directory on a fresh journaled ext4 loop image (ported from
# shared/reference/scripts/state-disk.sh).
#
# Why: this machine's root filesystem is ext4 WITHOUT a journal. After mass deletes, inode
# allocation there scans "recently deleted" inodes and file creation gets 5-20x slower for
# minutes (layer extract 1.0 s -> 5-7 s, overlay mount 0.13 ms -> 4 ms), which would make
# benchmark runs depend on what ran before. A journaled loop image (or tmpfs) does not.
#
# Usage: state-disk.sh up <dir> [size=20G] [image=/var/tmp/<dir as name>.ext4]
#        state-disk.sh down <dir> [image]
# `up` always makes a new image (an old one left by a crash is replaced), so the filesystem
# starts empty; `down` unmounts and deletes the image. The image file is sparse.
set -euo pipefail
ACT=${1:?usage: state-disk.sh up|down <dir> [size] [image]}
DIR=${2:?usage: state-disk.sh up|down <dir> [size] [image]}
if [[ $ACT == up ]]; then
  SIZE=${3:-20G}; IMG=${4:-}
else
  SIZE=; IMG=${3:-}
fi
[[ -n $IMG ]] || IMG=/var/tmp/$(echo "$DIR" | tr / _ | sed 's/^_*//').ext4
case $ACT in
  up)
    mkdir -p "$DIR"
    if mountpoint -q "$DIR"; then
      echo "state-disk.sh: $DIR is already a mount point" >&2
      exit 1
    fi
    rm -f "$IMG"
    truncate -s "$SIZE" "$IMG"
    mkfs.ext4 -q -F -j -E lazy_itable_init=1,lazy_journal_init=1 "$IMG"
    mount -o loop "$IMG" "$DIR"
    echo "state-disk.sh: $DIR on $(findmnt -no SOURCE "$DIR") (journaled ext4 image $IMG, $SIZE)"
    ;;
  down)
    if mountpoint -q "$DIR"; then
      umount "$DIR" 2>/dev/null || umount -l "$DIR"
    fi
    rm -f "$IMG"
    ;;
  *) echo "state-disk.sh: first argument must be up or down" >&2; exit 1 ;;
esac

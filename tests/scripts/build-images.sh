#!/usr/bin/env bash
# Builds the registry tests' images offline, from busybox-static, with umoci (ported from
# shared/reference/scripts/build-busybox-image.sh). Needs: busybox-static, umoci, python3, tar.
# Usage: build-images.sh <outdir>   → OCI layout <outdir>/oci with tags:
#   busybox     1 layer: /bin/busybox + applet symlinks, /etc/passwd; Cmd ["/bin/sh"]
#   multilayer  3 layers: busybox; + /data/l2.txt, /etc/motd, /opq/{old.txt,sub/deep.txt};
#               + /data/l3.txt, /etc/motd changed, a whiteout data/.wh.l2.txt and an opaque
#               dir opq/.wh..wh..opq (only opq/new.txt survives)
#   amd64, arm64  single-platform images (arm64 is fake: the same binary, config says arm64)
#   multiarch   OCI image index over amd64 + arm64/v8
# The harness (tests/src/images.rs) caches the result by this script's hash.
set -euo pipefail
OUT=${1:?usage: build-images.sh <outdir>}
for bin in /bin/busybox umoci python3 tar; do
  command -v "$bin" >/dev/null || { echo "build-images.sh: $bin is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
done
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
L="$OUT/oci"; B="$OUT/bundle"; S="$OUT/stage"
rm -rf "$L" "$B" "$S"
export SOURCE_DATE_EPOCH=0
umoci init --layout "$L"
umoci new --image "$L:busybox"
umoci unpack --image "$L:busybox" "$B"
R="$B/rootfs"
mkdir -p "$R"/{bin,etc,tmp,proc,sys,dev,root,var,usr/bin}
chmod 1777 "$R/tmp"
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do
  [[ $a == busybox ]] && continue
  ln -sf busybox "$R/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$R/etc/passwd"
echo 'root:x:0:' > "$R/etc/group"
umoci repack --image "$L:busybox" "$B"
umoci config --image "$L:busybox" --config.cmd /bin/sh \
  --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.workingdir / --os linux --architecture amd64 \
  --author dagger-engine-tests --created 1970-01-01T00:00:00Z

# multilayer, layer 2: files a later layer deletes or hides.
umoci tag --image "$L:busybox" multilayer
rm -rf "$B"; umoci unpack --image "$L:multilayer" "$B"
mkdir -p "$B/rootfs/data" "$B/rootfs/opq/sub"
echo layer2 > "$B/rootfs/data/l2.txt"
echo hello > "$B/rootfs/etc/motd"
echo old > "$B/rootfs/opq/old.txt"
echo deep > "$B/rootfs/opq/sub/deep.txt"
umoci repack --image "$L:multilayer" "$B"
# Layer 3 is written by hand so it holds both whiteout forms: umoci repack only emits
# per-file whiteouts, never an opaque directory.
mkdir -p "$S/data" "$S/etc" "$S/opq"
echo layer3 > "$S/data/l3.txt"
: > "$S/data/.wh.l2.txt"
echo changed > "$S/etc/motd"
: > "$S/opq/.wh..wh..opq"
echo new > "$S/opq/new.txt"
chmod 0755 "$S/data" "$S/etc" "$S/opq"
chmod 0644 "$S/data/l3.txt" "$S/data/.wh.l2.txt" "$S/etc/motd" "$S/opq/.wh..wh..opq" "$S/opq/new.txt"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=ustar \
  -C "$S" -cf "$OUT/layer3.tar" data etc opq
umoci raw add-layer --image "$L:multilayer" --history.created_by "layer 3: whiteout + opaque dir" \
  --history.created 1970-01-01T00:00:00Z "$OUT/layer3.tar"
umoci config --image "$L:multilayer" --config.label org.example.layers=3

# Platform variants.
umoci tag --image "$L:busybox" amd64
umoci tag --image "$L:busybox" arm64
umoci config --image "$L:arm64" --architecture arm64 --config.label fake.arch=arm64
umoci gc --layout "$L"
rm -rf "$B" "$S" "$OUT/layer3.tar"

# umoci and skopeo cannot create an index: write one over amd64 + arm64/v8, tagged multiarch.
python3 - "$L" <<'PY'
import json, hashlib, sys
L = sys.argv[1]
idx = json.load(open(f"{L}/index.json"))
def find(tag):
    for m in idx["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m
    sys.exit(f"tag {tag} missing from {L}/index.json")
mans = []
for tag, arch in (("amd64", "amd64"), ("arm64", "arm64")):
    m = dict(find(tag)); m.pop("annotations", None)
    m["platform"] = {"architecture": arch, "os": "linux"}
    if arch == "arm64":
        m["platform"]["variant"] = "v8"
    mans.append(m)
ii = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": mans}
data = json.dumps(ii, separators=(",", ":")).encode()
d = hashlib.sha256(data).hexdigest()
open(f"{L}/blobs/sha256/{d}", "wb").write(data)
idx["manifests"] = [m for m in idx["manifests"]
                    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != "multiarch"]
idx["manifests"].append({"mediaType": ii["mediaType"], "digest": f"sha256:{d}", "size": len(data),
                         "annotations": {"org.opencontainers.image.ref.name": "multiarch"}})
json.dump(idx, open(f"{L}/index.json", "w"))
PY
umoci ls --layout "$L" >&2

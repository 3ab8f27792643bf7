#!/bin/sh
# Lays out the root filesystem of the trimtab image from a built binary: what the Dockerfile's
# builder stage produces and what .ci/image-test hands to `podman build` in its place, so both
# build the same runtime stage.
#
#   docker/rootfs.sh BINARY OUT
#
# OUT/root/  →  /       the stripped static binary /trimtab; /etc/passwd and /etc/group with the
#                       unprivileged user trimtab (uid/gid 10001); an empty /tmp
# OUT/data/  →  /data   (owned by trimtab) the volume: the demo's rules in /data/scripts, so a
#                       fresh named volume starts with them and uploaded rules persist
set -eu
bin=$1
out=$2
here=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$out"
mkdir -p "$out/root/etc" "$out/root/tmp" "$out/data/scripts/experiments" "$out/data/scripts/bandits"
strip -o "$out/root/trimtab" "$bin"
chmod 0755 "$out/root/trimtab"
chmod 1777 "$out/root/tmp"
printf 'root:x:0:0:root:/:/trimtab\ntrimtab:x:10001:10001:trimtab:/data:/trimtab\n' > "$out/root/etc/passwd"
printf 'root:x:0:\ntrimtab:x:10001:\n' > "$out/root/etc/group"
cp "$here"/scripts/*.rhai "$here/scripts/README.md" "$out/data/scripts/"
cp "$here/scripts/bandits/README.md" "$out/data/scripts/bandits/"

#!/usr/bin/env bash
# Build the Portal Desktop demo: a raw hard-disk image of exactly 1 MiB.
#   bash demo/build.sh OUTPUT.img
# Needs only nasm and coreutils; the output is byte-for-byte reproducible
# (nasm's flat binary output has no timestamps).
set -euo pipefail

if [ "$#" -ne 1 ]; then
    echo "usage: $0 OUTPUT.img" >&2
    exit 2
fi

out=$1
src_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out_dir=$(dirname "$out")
mkdir -p "$out_dir"

# Assemble next to the target and rename, so a failed build never leaves a
# truncated image behind.
tmp=$(mktemp "$out_dir/.demo-img.XXXXXX")
trap 'rm -f "$tmp"' EXIT

nasm -f bin -w+all -I "$src_dir/" -o "$tmp" "$src_dir/demo.asm"

size=$(stat -c %s "$tmp")
if [ "$size" -ne 1048576 ]; then
    echo "build.sh: image is $size bytes, expected 1048576" >&2
    exit 1
fi

chmod 644 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT

#!/bin/bash
# Device check for issue 5: ppcr built with --features cuda,wgpu (cubecl-cuda on its NVRTC
# backend, see bench/gpu/README.md), run on the lent GPU. Writes $OUT/log.txt as it goes.
set -u
exec > >(tee -a "$OUT/log.txt") 2>&1
B=${GPU_DIR:-gpu-carry}/ppcr  # next to ppcr.xz, in a carried folder
xz -dc ${GPU_DIR:-gpu-carry}/ppcr.xz > $B 2>/dev/null || python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('${GPU_DIR:-gpu-carry}/ppcr.xz'), open('$B','wb'))"
chmod +x $B
echo "== $(date -u +%FT%TZ) machine"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nproc
for d in $(timeout 40 find / -xdev \( -name 'libnvrtc.so*' -o -name 'libnvrtc-builtins.so*' \) -printf '%h\n' 2>/dev/null | sort -u); do LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:$d"; done
export LD_LIBRARY_PATH; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
step() { local t=$1; shift; echo "== $(date -u +%T) [$t s] $*"; timeout "$t" "$@"; echo "== rc=$?"; }
step 90 $B bench --suite unit --device cuda --runs 15 --warmup 3
step 180 $B bench --suite network --device cuda --runs 9 --warmup 3 --resnet18-input 224
step 45 $B bench --suite end-to-end --device cuda --runs 15 --warmup 3
step 90 $B train --device cuda --out /tmp/run-cuda
ls /tmp/run-cuda 2>/dev/null | head
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
ldconfig -p | grep -c libvulkan
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
ls /usr/local/nvidia/share/vulkan/icd.d/ /usr/share/vulkan/icd.d/ 2>&1 | head
step 90 $B bench --suite network --device wgpu --attn ppcr --runs 7 --warmup 3
echo "== $(date -u +%T) done"

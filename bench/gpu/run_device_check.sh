#!/bin/bash
# Device check for issue 5: ppcr built with --features cuda,wgpu (cubecl-cuda on its NVRTC
# backend, cudarc bound to CUDA 13.0; see README.md here), run on a lent GPU in one call of at
# most 600 s. Writes $OUT/log.txt as it goes, and CubeCL's compilation/autotune log.
#
# The first cuda attempt (2026-11-26) printed no epoch within 90 s. The likely reason, found
# since on this machine's software Vulkan driver: the first use of every kernel compiles it
# (335 kernels for one epoch of the default model, most of them burn's fused element-wise
# kernels and matmul variants, plus autotuning), which took 226-233 s of a first epoch whose
# next one took 42 s there. So every step here has minutes, each step's first epoch or run is
# compile time, and CubeCL logs what it compiled. A second suspect, cudarc bound to a newer
# CUDA than the driver's, is removed by this build (CUDARC_CUDA_VERSION=13000).
set -u
exec > >(tee -a "$OUT/log.txt") 2>&1
DIR=${GPU_DIR:-gpu-carry}
B=$DIR/ppcr
xz -dc $DIR/ppcr.xz > $B 2>/dev/null || python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('$DIR/ppcr.xz'), open('$B','wb'))"
chmod +x $B
echo "== $(date -u +%FT%TZ) machine"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; nproc
for d in $(timeout 20 find / -xdev \( -name 'libnvrtc.so*' -o -name 'libnvrtc-builtins.so*' \) -printf '%h\n' 2>/dev/null | sort -u); do LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:$d"; done
export LD_LIBRARY_PATH; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
step() { local t=$1; shift; echo "== $(date -u +%T) [$t s] $*"; timeout "$t" "$@"; echo "== rc=$?"; }
export CUBECL_AUTOTUNE_LEVEL=minimal
# 1. Train the default model a few epochs: epoch 1 is compilation, the rest the GPU's speed.
CUBECL_DEBUG_LOG=$OUT/cubecl-train.log step 270 $B train --device cuda --epochs 4 --out /tmp/run-cuda
echo "kernels compiled: $(grep -c START_KERNEL_COMPILATION $OUT/cubecl-train.log 2>/dev/null)"
gzip -f $OUT/cubecl-train.log 2>/dev/null
# 2. The network ratios (ResNet-20 at 32 px, ResNet-18 at 224 px), PPCR against none.
step 200 $B bench --suite network --device cuda --attn ppcr --runs 5 --warmup 2 --resnet18-input 224
# 3. wgpu through the NVIDIA Vulkan driver (loader packages in .gl, carried).
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
step 50 $B bench --suite network --device wgpu --attn ppcr --runs 5 --warmup 2
echo "== $(date -u +%T) done"

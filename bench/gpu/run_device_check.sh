#!/bin/bash
# The one-call GPU check of issue 21: run on a bare lent GPU (an H200 or H100) in one device
# call of at most 9 minutes, with the ppcr binary built as README.md here says (`--features
# cuda,vulkan`) carried compressed in $GPU_DIR (default gpu-carry) and the Vulkan loader
# packages in .gl (see the device tool's README). Writes $OUT/log.txt as it goes; every line of
# a timed command carries its seconds since that command started.
#
# It measures, in this order (each step gets only the time left before DEADLINE):
#  1. PyTorch eager on the same GPU: the network and end-to-end cases and every convolution
#     shape (bench/pytorch_reference.py --suites network,end-to-end,conv at 224 px);
#  2. for wgpu (CubeCL's SPIR-V compiler on the Vulkan driver), then CUDA (NVRTC):
#     a. `ppcr train` of the default model from a bare kernel cache, to its first epoch;
#     b. the same in a new process started in another directory (the kernel cache at work);
#     c. `ppcr bench --suite end-to-end`, `--suite network` (ResNet-20@32 and ResNet-18@224,
#        plain and PPCR) and `--suite conv` (every convolution shape; CubeCL's autotune choices
#        logged to $OUT/autotune-<backend>.txt);
#     d. `--suite network` again with `--precision f16` (convolutions in half precision).
# The kernel cache it grew travels back as $OUT/kernel-cache.tgz: put it in $GPU_DIR and the
# next call starts from it (steps a then measure a warm machine; the log says which).
set -u
exec > >(tee -a "$OUT/log.txt") 2>&1
START=$(date +%s)
DEADLINE=${DEADLINE:-500}
DIR=${GPU_DIR:-gpu-carry}
WORK=$(pwd)
B=$WORK/$DIR/ppcr
xz -dc "$DIR/ppcr.xz" > "$B" && chmod +x "$B" || { echo "no binary in $DIR/ppcr.xz"; exit 1; }
# A second binary, built with `--features wgpu` alone (WGSL), for wgpu when the first one's
# SPIR-V path fails (Debian's lavapipe crashes compiling CubeCL's SPIR-V).
WGSL=$WORK/$DIR/ppcr-wgsl
[ -f "$DIR/ppcr-wgsl.xz" ] && xz -dc "$DIR/ppcr-wgsl.xz" > "$WGSL" && chmod +x "$WGSL" || WGSL=

echo "== $(date -u +%FT%TZ) machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
# The Vulkan loader (wgpu) from the carried packages; NVRTC (cuda) from PyTorch's wheels.
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$VK_DRIVER_FILES" ] || unset VK_DRIVER_FILES
for d in $(timeout 20 find / -xdev \( -name 'libnvrtc.so*' -o -name 'libnvrtc-builtins.so*' \) \
    -printf '%h\n' 2>/dev/null | sort -u); do LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:$d"; done
export LD_LIBRARY_PATH

export PPCR_CACHE_DIR=/tmp/ppcr-kernels
mkdir -p $PPCR_CACHE_DIR
if [ -f "$DIR/kernel-cache.tgz" ]; then
  tar xzf "$DIR/kernel-cache.tgz" -C $PPCR_CACHE_DIR && echo "carried kernel cache: $(du -sh $PPCR_CACHE_DIR | cut -f1)"
else
  echo "bare kernel cache"
fi

# Seconds since the command started, before each line of its output.
stamp() { python3 -u -c '
import sys, time
t = time.time()
for line in sys.stdin:
    print(f"{time.time() - t:7.1f}s {line}", end="", flush=True)'; }
step() {
  local want=$1; shift
  local left=$((DEADLINE - ($(date +%s) - START) - 25))
  local t=$((want < left ? want : left))
  if [ "$t" -lt 10 ]; then echo "== skipped (deadline): $*"; return; fi
  echo "== $(date -u +%T) +$(($(date +%s) - START))s [limit $t s] $*"
  timeout "$t" "$@" 2>&1 | stamp
  RC=${PIPESTATUS[0]}
  echo "== rc=$RC"
}

# SKIP_TORCH=1 leaves PyTorch out (a second call that only finishes a backend).
[ -n "${SKIP_TORCH:-}" ] || step 70 python3 bench/pytorch_reference.py --device cuda --runs 7 \
  --warmup 3 --suites network,end-to-end,conv --resnet18-input 224

# EPOCHS: epochs of the first training run (default 1). TRAIN_ONLY="wgpu": for the backends
# named, only that first training run. SKIP_SECOND=1: no second training process.
EPOCHS=${EPOCHS:-1}
# BACKENDS=wgpu:cpu runs the ppcr steps on lavapipe, to try the script on a machine without a GPU.
for backend in ${BACKENDS:-wgpu cuda}; do
  want_train=$([ $backend = cuda ] && echo 170 || echo 80)
  name=${backend//:/-}
  mkdir -p /tmp/$name-a /tmp/$name-b /tmp/$name-c
  # CubeCL's autotune choices, from every step of this backend (autotune runs once per shape,
  # then its result is kept in the cache).
  for d in a b c; do
    printf '[autotune.logger]\nfile = "/tmp/autotune-%s.log"\nlevel = "minimal"\n' $name \
      > /tmp/$name-$d/cubecl.toml
  done
  # NVRTC compiles about one kernel a second: a bare machine's CUDA run gets autotune's
  # minimal level (fewest candidates to compile), as in the measurements.
  if [ $backend = cuda ]; then export CUBECL_AUTOTUNE_LEVEL=minimal; fi
  P=$B
  step $want_train env -C /tmp/$name-a "$P" train --device $backend --epochs $EPOCHS --out run
  if [ "$RC" -ne 0 ] && [ "$RC" -ne 124 ] && [ "${backend%%:*}" = wgpu ] && [ -n "$WGSL" ]; then
    echo "== rc=$RC: wgpu steps use the WGSL binary"
    P=$WGSL
    rm -rf /tmp/$name-a/run
    step $want_train env -C /tmp/$name-a "$P" train --device $backend --epochs $EPOCHS --out run
  fi
  [ -n "${TRAIN_ONLY:-}" ] && [[ " $TRAIN_ONLY " == *" $backend "* ]] && continue
  [ -n "${SKIP_SECOND:-}" ] || step 40 env -C /tmp/$name-b "$P" train --device $backend --epochs 1 --out run
  step 40 env -C /tmp/$name-c "$P" bench --suite end-to-end --device $backend --runs 7 --warmup 3
  step 100 env -C /tmp/$name-c "$P" bench --suite network --device $backend --attn ppcr \
    --runs 5 --warmup 2 --resnet18-input 224
  step 60 env -C /tmp/$name-c "$P" bench --suite conv --device $backend --runs 7 --warmup 3
  # Mixed precision (`--precision f16`: the convolutions in f16), last: what time is left.
  step 100 env -C /tmp/$name-c "$P" bench --suite network --device $backend --attn ppcr \
    --runs 5 --warmup 2 --resnet18-input 224 --precision f16
  grep -h "^Fastest result" /tmp/autotune-$name.log 2>/dev/null | cut -c1-220 > "$OUT/autotune-$name.txt"
done

echo "== kernel cache: $(du -sh $PPCR_CACHE_DIR | cut -f1)"
tar czf "$OUT/kernel-cache.tgz" -C $PPCR_CACHE_DIR . && ls -la "$OUT/kernel-cache.tgz"
echo "== $(date -u +%T) +$(($(date +%s) - START))s done"

#!/usr/bin/env python3
"""Where a plain ResNet training step goes, per op kind, in ppcr and in PyTorch.

ppcr: `perf record` (DWARF call graphs) samples `ppcr bench --suite step` (training steps of one
network and nothing else); each sample is put in the first op kind whose pattern matches a
frame of its stack (kernel frames first, so a `memset` inside the convolution counts as the
convolution). The share of samples of each kind, times the step's wall time, is the kind's
part of a step. Samples are CPU time of both threads, so a kind that runs on one thread while
the other waits shows as the waiting thread's "idle" beside it.

PyTorch: `torch.profiler` over the same steps (same network, batch and SGD step as
bench/pytorch_reference.py); each op's self CPU time is put in a kind by its name, and the
shares of the profiled total are scaled to the step's unprofiled wall time.

Usage: python3 bench/profile_step.py [--ppcr target/release/ppcr] [--backbone resnet20]
       [--input 32] [--batch 64] [--steps 20] [--threads 2] [--no-pytorch]
Needs `perf` (Debian's linux-perf) and, for the PyTorch column, `torch`. Not part of CI.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# (kind, pattern searched in every frame of a sample's stack), first match wins.
PPCR_KINDS = [
    ("PPCR", r"kernels::cpu::ppcr"),
    ("setup (model init, data)", r"TensorData::random|ResNetConfig.*init|Distribution|"
                                 r"step_bench::\{\{closure\}\}::\{\{closure\}\}::init"),
    # The direct path (stride 1, up to 128 channels, AVX-512) runs both passes in one function.
    ("conv forward and input gradient, direct", r"conv_direct::"),
    ("conv forward (im2col)", r"kernels::cpu::conv::forward"),
    ("conv input gradient (im2col)", r"conv::input_gradient_tile"),
    ("conv weight gradient", r"conv::weight_gradient_tile"),
    ("conv backward: tiles, partial sums", r"kernels::cpu::conv::backward"),
    ("burn conv2d (not the kernel)", r"burn_flex::ops::conv|conv_transpose2d"),
    ("BatchNorm(+ReLU) forward", r"kernels::cpu::batch_norm::(forward|normalise|channel_statistics)"),
    ("BatchNorm(+ReLU) backward", r"kernels::cpu::batch_norm::backward|channel_gradient_sums|"
                                  r"input_gradient_plane"),
    ("BatchNorm running statistics", r"models::layers::batch_norm"),
    ("other BatchNorm frames (dispatch, burn's layer)", r"batch_norm"),
    ("loss (cross-entropy)", r"cross_entropy|CrossEntropy|log_softmax"),
    ("optimizer update (SGD)", r"burn_optim|Sgd|optim::"),
    ("classifier (linear)", r"Linear::forward|float_matmul|matmul"),
    ("global pooling", r"mean_dim|avg_pool"),
    ("residual add, ReLU, shortcut", r"kernels::cpu::residual|float_add|relu|ZeroPadShortcut|"
                                     r"float_cat|slice"),
    ("autodiff bookkeeping", r"burn_autodiff"),
    # After every named kind: closures that rayon inlined into its own functions, on a job the
    # other thread stole, whose stack names no caller.
    ("rayon job without a named caller", r"ForEachConsumer|Producer::fold_with"),
    # These two look at the sampled frame only: every worker thread's stack holds rayon's
    # wait loop, and every kernel allocates.
    ("leaf: allocation, page faults", r"malloc|_int_free|free\b|cfree|page_fault|clear_page|"
                                      r"mmap|munmap|brk|memcg"),
    ("leaf: threads waiting (rayon)", r"rayon_core|futex|sched_yield|finish_task_switch|"
                                      r"do_syscall|_raw_spin"),
]

TORCH_KINDS = [
    ("conv forward", r"mkldnn_convolution|_convolution$|aten::convolution$|conv2d|_slow_conv"),
    ("conv backward (input and weight)", r"convolution_backward"),
    ("BatchNorm forward", r"native_batch_norm$|batch_norm$|_batch_norm_impl"),
    ("BatchNorm backward", r"batch_norm_backward"),
    ("ReLU forward and backward", r"relu|threshold_backward|clamp_min"),
    ("residual add, shortcut", r"aten::add$|aten::add_$|aten::cat|aten::slice|aten::pad|"
                               r"constant_pad"),
    ("loss (cross-entropy)", r"cross_entropy|log_softmax|nll_loss"),
    ("optimizer update (SGD)", r"Optimizer|_foreach|sgd|zero_grad"),
    ("classifier (linear)", r"addmm|aten::mm$|linear|aten::t$"),
    ("global pooling", r"adaptive_avg_pool|aten::mean"),
    ("allocation", r"empty|zeros|zero_|fill_|resize_|copy_"),
]


def classify(frames, kinds):
    for kind, pattern in kinds:
        if kind.startswith("leaf: "):
            if frames and re.search(pattern, frames[0]):
                return kind[len("leaf: "):]
        elif any(re.search(pattern, frame) for frame in frames):
            return kind
    return "other"


def ppcr_profile(args):
    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "perf.data")
        command = [args.ppcr, "bench", "--suite", "step", "--backbone", args.backbone,
                   "--input", str(args.input), "--batch", str(args.batch),
                   "--runs", str(args.steps), "--warmup", "2"]
        record = subprocess.run(["perf", "record", "-q", "-F", "499", "--call-graph",
                                 "dwarf,32768", "-o", data, "--"] + command,
                                capture_output=True, text=True)
        if record.returncode != 0:
            sys.exit(f"perf record failed: {record.stderr.strip()}")
        match = re.search(r"training step ([0-9.]+) ms", record.stdout)
        if not match:
            sys.exit(f"ppcr printed no step time:\n{record.stdout}{record.stderr}")
        step_ms = float(match.group(1))
        script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym"],
                                capture_output=True, text=True)
    counts = collections.Counter()
    frames = []
    for line in script.stdout.splitlines() + [""]:
        if line.strip():
            frames.append(line.strip())
        elif frames:
            counts[classify(frames, PPCR_KINDS)] += 1
            frames = []
    setup = counts.pop("setup (model init, data)", 0)
    return step_ms, counts, setup


def torch_profile(args):
    sys.path.insert(0, HERE)
    import torch
    from torch.profiler import ProfilerActivity, profile

    import pytorch_reference as reference

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, args.input, args.input)
    labels = torch.arange(args.batch) % 10
    model = reference.ResNet(args.backbone, False, 3, args.input)
    step = reference.sgd_step(model, images, labels)
    model.train()
    timing = reference.time_median(2, args.steps, step)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    counts = collections.Counter()
    for event in prof.key_averages():
        counts[classify([event.key], TORCH_KINDS)] += event.self_cpu_time_total
    return timing["median_ms"], counts, torch.__version__


def print_table(title, step_ms, counts):
    total = sum(counts.values())
    print(title)
    print(f"{'op kind':<36} {'share':>7} {'ms/step':>9}")
    for kind, count in counts.most_common():
        share = count / total
        print(f"{kind:<36} {share:>6.1%} {share * step_ms:>9.1f}")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ppcr", default=os.path.join(HERE, "..", "target", "release", "ppcr"))
    parser.add_argument("--backbone", default="resnet20", choices=["resnet20", "resnet18"])
    parser.add_argument("--input", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-pytorch", action="store_true")
    args = parser.parse_args()
    if not os.path.exists(args.ppcr):
        sys.exit(f"no ppcr binary at {args.ppcr}; build it with `cargo build --release`")
    step_ms, counts, setup = ppcr_profile(args)
    print_table(f"ppcr: {args.backbone}@{args.input} batch {args.batch}, plain, training step "
                f"{step_ms:.1f} ms (median of {args.steps}); {sum(counts.values())} perf samples "
                f"in steps, {setup} in set-up left out", step_ms, counts)
    if not args.no_pytorch:
        torch_ms, torch_counts, version = torch_profile(args)
        print_table(f"PyTorch {version}: the same step {torch_ms:.1f} ms (median of "
                    f"{args.steps}, {args.threads} threads), self CPU time per op kind",
                    torch_ms, torch_counts)


if __name__ == "__main__":
    main()

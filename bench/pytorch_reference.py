#!/usr/bin/env python3
"""PyTorch side of `ppcr bench`: the same networks and the same PPCR unit, timed the same way.

The PPCR unit is written as the authors' released PyTorch code writes it: one channel slice
and mean per pyramid group, concatenated, standardised per pixel with torch.std-style
statistics, and integrated with one learned K-vector per pixel position. (eps = 1e-5 under the
square root, as in ppcr, where the released code has none.) The networks are CIFAR ResNet-20
(option-A shortcuts) and torchvision-style ResNet-18 with the unit after the last BatchNorm of
every block, as in `ppcr`.

What is timed, as in `ppcr bench` (src/profile/benches.rs):
  unit:     PPCR forward and sum(ppcr(x)).backward() against x * 1, at the stage shapes of
            ResNet-20 at 32 px (batch 64) and ResNet-18 at 224 px (batch 32);
  network:  one SGD step (lr 0.01, no momentum; forward, cross-entropy, backward, update) and
            one inference forward, ResNet-20 at 32 px batch 64 and ResNet-18 at 112 px batch
            32, random data, 10 classes, with and without PPCR;
  end to end: the default `ppcr train` model's SGD step (ResNet-20 + PPCR, 28x28x1, batch 32).
Medians over --runs timed runs after --warmup untimed ones, eager mode, --threads CPU threads.
On a GPU (--device cuda), every timed operation ends with torch.cuda.synchronize(), as ppcr's
ends with a device sync.

Usage: python3 bench/pytorch_reference.py [--threads 2] [--runs 7] [--warmup 2] [--device cpu]
       [--suites unit,network,end-to-end] [--json]
Needs only `torch` (pip install torch). Not part of CI.
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class PPCR(nn.Module):
    """Pyramid pixel context recalibration, as in the released code."""

    def __init__(self, channels, height, width, levels=4, eps=1e-5):
        super().__init__()
        self.groups = []
        for level in range(levels):
            n = 2 ** level
            for g in range(n):
                self.groups.append((channels * g // n, channels * (g + 1) // n))
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(1, len(self.groups), height, width))

    def forward(self, x):
        context = torch.cat(
            [x[:, start:end].mean(dim=1, keepdim=True) for start, end in self.groups], dim=1
        )
        mean = context.mean(dim=1, keepdim=True)
        var = context.var(dim=1, keepdim=True, unbiased=False)
        normalised = (context - mean) / torch.sqrt(var + self.eps)
        weights = torch.sigmoid((normalised * self.weight).sum(dim=1, keepdim=True))
        return x * weights


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride, size, attention, shortcut):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.attention = PPCR(cout, size, size) if attention else nn.Identity()
        self.shortcut_kind = shortcut
        self.pad = cout - cin
        self.stride = stride
        if shortcut == "b" and (stride != 1 or cin != cout):
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )
        else:
            self.downsample = None

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.attention(self.bn2(self.conv2(out)))
        if self.downsample is not None:
            identity = self.downsample(x)
        elif self.stride != 1 or self.pad:
            # Option A: subsample and zero-pad the channels (He et al. 2016, CIFAR).
            identity = x[:, :, :: self.stride, :: self.stride]
            identity = F.pad(identity, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        else:
            identity = x
        return F.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, kind, attention, in_channels, size, classes=10):
        super().__init__()
        if kind == "resnet20":
            widths, blocks, shortcut = [16, 32, 64], [3, 3, 3], "a"
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
            )
            cin, spatial = 16, size
        else:
            widths, blocks, shortcut = [64, 128, 256, 512], [2, 2, 2, 2], "b"
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False),
                nn.BatchNorm2d(64),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
            cin, spatial = 64, (size + 1) // 2
            spatial = (spatial + 1) // 2
        layers = []
        for stage, (width, count) in enumerate(zip(widths, blocks)):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                if stride == 2:
                    spatial = (spatial + 1) // 2
                layers.append(BasicBlock(cin, width, stride, spatial, attention, shortcut))
                cin = width
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


DEVICE = torch.device("cpu")


def synchronize():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def time_median(warmup, runs, operation):
    for _ in range(warmup):
        operation()
    synchronize()
    samples = []
    for _ in range(max(runs, 1)):
        started = time.perf_counter()
        operation()
        synchronize()
        samples.append((time.perf_counter() - started) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples),
            "max_ms": max(samples), "runs": len(samples)}


def sgd_step(model, images, labels):
    """One SGD step (lr 0.01, no momentum) of `model` on one batch, as ppcr's benchmarks take it."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def unit_shapes():
    shapes = [(f"resnet20@32 stage {i + 1}", (64, c, s, s))
              for i, (c, s) in enumerate([(16, 32), (32, 16), (64, 8)])]
    shapes += [(f"resnet18@224 stage {i + 1}", (32, c, s, s))
               for i, (c, s) in enumerate([(64, 56), (128, 28), (256, 14), (512, 7)])]
    return shapes


def unit_bench(warmup, runs):
    rows = []
    for label, shape in unit_shapes():
        torch.manual_seed(0)
        x = torch.randn(shape, device=DEVICE)
        ppcr = PPCR(shape[1], shape[2], shape[3]).to(DEVICE)
        with torch.no_grad():
            ppcr.weight.normal_(0.0, 0.1)
            copy = time_median(warmup, runs, lambda: x * 1.0)
            forward = time_median(warmup, runs, lambda: ppcr(x))
        x_train = x.clone().requires_grad_(True)
        forward_backward = time_median(warmup, runs, lambda: ppcr(x_train).sum().backward())
        rows.append({"label": label, "shape": list(shape), "copy": copy, "forward": forward,
                     "forward_backward": forward_backward,
                     "forward_ratio": forward["median_ms"] / copy["median_ms"],
                     "forward_backward_ratio":
                         forward_backward["median_ms"] / copy["median_ms"]})
    return rows


def conv_shapes(resnet18_input):
    """The convolution shapes of `ppcr bench --suite conv` (src/profile/conv.rs), in its order:
    (label, batch, in channels, out channels, size, kernel, stride)."""
    shapes = [("resnet20 stem", 64, 3, 16, 32, 3, 1), ("resnet20 stage 1", 64, 16, 16, 32, 3, 1),
              ("resnet20 stage 2 down", 64, 16, 32, 32, 3, 2),
              ("resnet20 stage 2", 64, 32, 32, 16, 3, 1),
              ("resnet20 stage 3 down", 64, 32, 64, 16, 3, 2),
              ("resnet20 stage 3", 64, 64, 64, 8, 3, 1),
              ("resnet18 stem 7x7", 32, 3, 64, resnet18_input, 7, 2)]
    size = ((resnet18_input + 6 - 7) // 2 + 1 + 1) // 2
    shapes.append(("resnet18 stage 1", 32, 64, 64, size, 3, 1))
    for stage, channels in [(2, 128), (3, 256), (4, 512)]:
        wide = channels // 2
        shapes.append((f"resnet18 stage {stage} down", 32, wide, channels, size, 3, 2))
        shapes.append((f"resnet18 stage {stage} 1x1 down", 32, wide, channels, size, 1, 2))
        size = (size + 2 - 3) // 2 + 1
        shapes.append((f"resnet18 stage {stage}", 32, channels, channels, size, 3, 1))
    return shapes


def conv_bench(resnet18_input, warmup, runs):
    rows = []
    for label, batch, cin, cout, size, kernel, stride in conv_shapes(resnet18_input):
        torch.manual_seed(0)
        x = torch.randn(batch, cin, size, size, device=DEVICE)
        conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False).to(DEVICE)
        with torch.no_grad():
            forward = time_median(warmup, runs, lambda: conv(x))
        x_train = x.clone().requires_grad_(True)
        seed = torch.ones_like(conv(x_train))
        forward_backward = time_median(warmup, runs, lambda: conv(x_train).backward(seed))
        out = (size + 2 * (kernel // 2) - kernel) // stride + 1
        flops = 2.0 * batch * cout * out * out * cin * kernel * kernel
        rows.append({"label": label, "input": [batch, cin, size, size],
                     "filter": [cout, kernel, stride], "forward": forward,
                     "forward_backward": forward_backward,
                     "forward_gflops": flops / (forward["median_ms"] * 1e6)})
    return rows


def network_bench(kind, size, batch, channels, warmup, runs, units=("none", "ppcr")):
    torch.manual_seed(0)
    images = torch.randn(batch, channels, size, size, device=DEVICE)
    labels = torch.arange(batch, device=DEVICE) % 10
    rows = []
    for unit in units:
        torch.manual_seed(0)
        model = ResNet(kind, unit == "ppcr", channels, size).to(DEVICE)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        step = sgd_step(model, images, labels)
        model.train()
        train = time_median(warmup, runs, step)
        model.eval()
        with torch.no_grad():
            infer = time_median(warmup, runs, lambda: model(images))
        rows.append({"backbone": kind, "input": size, "batch": batch, "attention": unit,
                     "params": params, "train_step": train, "inference": infer})
    for row in rows:
        row["train_ratio"] = row["train_step"]["median_ms"] / rows[0]["train_step"]["median_ms"]
        row["inference_ratio"] = (row["inference"]["median_ms"]
                                  / rows[0]["inference"]["median_ms"])
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--resnet18-input", type=int, default=None,
                        help="ResNet-18 input size (default: 112 for network, 224 for conv)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--suites", default="unit,network,end-to-end",
                        help="comma-separated: unit, network, end-to-end, conv (conv is not in "
                             "the default)")
    args = parser.parse_args()
    suites = set(args.suites.split(","))
    unknown = suites - {"unit", "network", "end-to-end", "conv"}
    if unknown:
        parser.error(f"unknown suites {sorted(unknown)}; valid: unit, network, end-to-end, conv")
    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    report = {"torch": torch.__version__, "threads": args.threads, "device": str(DEVICE)}
    if DEVICE.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(DEVICE)

    report["unit"] = unit_bench(args.warmup, args.runs) if "unit" in suites else []
    report["network"] = (
        network_bench("resnet20", 32, 64, 3, args.warmup, args.runs)
        + network_bench("resnet18", args.resnet18_input or 112, 32, 3, args.warmup, args.runs)
    ) if "network" in suites else []
    if "end-to-end" in suites:
        end = network_bench("resnet20", 28, 32, 1, args.warmup, args.runs, units=("ppcr",))[0]
        report["end_to_end"] = {"description": "resnet20 + ppcr, 28x28x1, batch 32, SGD step",
                                "step": end["train_step"],
                                "images_per_second": 32 / (end["train_step"]["median_ms"] / 1e3)}
    report["conv"] = (conv_bench(args.resnet18_input or 224, args.warmup, args.runs)
                      if "conv" in suites else [])
    if args.json:
        print(json.dumps(report, indent=2))
        return
    where = report.get("gpu", f"{args.threads} threads")
    print(f"PyTorch {torch.__version__}, {report['device']} ({where}), eager, "
          f"median of {args.runs}")
    if report["conv"]:
        print(f"{'where':<26} {'in':>16} {'filter':>7} {'fwd ms':>9} {'GFLOP/s':>8} "
              f"{'fwd+bwd ms':>11}")
        for r in report["conv"]:
            cout, kernel, stride = r["filter"]
            print(f"{r['label']:<26} {'x'.join(map(str, r['input'])):>16} "
                  f"{f'{cout}x{kernel}/{stride}':>7} {r['forward']['median_ms']:>9.3f} "
                  f"{r['forward_gflops']:>8.0f} {r['forward_backward']['median_ms']:>11.3f}")
        print()
    if report["unit"]:
        print(f"{'where':<22} {'shape':>18} {'copy ms':>9} {'fwd ms':>9} {'fwd/cp':>7} "
              f"{'fwd+bwd ms':>11} {'f+b/cp':>7}")
    for r in report["unit"]:
        print(f"{r['label']:<22} {str(r['shape']):>18} {r['copy']['median_ms']:>9.3f} "
              f"{r['forward']['median_ms']:>9.3f} {r['forward_ratio']:>7.2f} "
              f"{r['forward_backward']['median_ms']:>11.3f} {r['forward_backward_ratio']:>7.2f}")
    if report["network"]:
        print()
        print(f"{'network':<16} {'attn':<6} {'params':>10} {'train ms':>10} {'ratio':>7} "
              f"{'infer ms':>10} {'ratio':>7}")
    for r in report["network"]:
        print(f"{r['backbone'] + '@' + str(r['input']):<16} {r['attention']:<6} "
              f"{r['params']:>10} {r['train_step']['median_ms']:>10.1f} "
              f"{r['train_ratio']:>7.3f} {r['inference']['median_ms']:>10.1f} "
              f"{r['inference_ratio']:>7.3f}")
    if "end_to_end" not in report:
        return
    e = report["end_to_end"]
    print(f"\nend to end: {e['description']}: {e['step']['median_ms']:.1f} ms/step, "
          f"{e['images_per_second']:.0f} images/s")


if __name__ == "__main__":
    main()

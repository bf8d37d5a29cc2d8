#!/usr/bin/env python3
"""ppcr against PyTorch on the same CPU, side by side: the table of docs/performance.md.

Runs `ppcr bench --suite network` and `--suite end-to-end` (ResNet-20 at 32 px batch 64 and
ResNet-18 at --resnet18-input px batch 32, plain and with PPCR: one SGD training step and one
inference pass; the default `ppcr train` model's SGD step) and `bench/pytorch_reference.py`
with the same cases, in alternating turns (ppcr first in even turns, PyTorch first in odd ones),
so a machine that slows down during the run slows both. Each turn reports the medians of --runs
timed runs after --warmup; this script prints every turn's medians and the median over turns of
the per-turn speed ratio PyTorch ms / ppcr ms (above 1: ppcr is faster).

Usage: python3 bench/against_pytorch.py [--ppcr target/release/ppcr] [--turns 3] [--runs 5]
       [--warmup 2] [--threads 2] [--resnet18-input 112] [--json]
Needs `torch` (pip install torch) and a release build of ppcr (cargo build --release).
Not part of CI: timings belong to a benchmark, not a test.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(command):
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed with exit code {result.returncode}:\n"
                 f"{result.stderr.strip()}")
    return json.loads(result.stdout)


def ppcr_turn(args):
    common = ["--runs", str(args.runs), "--warmup", str(args.warmup), "--json"]
    network = run_json([args.ppcr, "bench", "--suite", "network", "--attn", "none,ppcr",
                        "--resnet18-input", str(args.resnet18_input)] + common)
    end = run_json([args.ppcr, "bench", "--suite", "end-to-end"] + common)
    cases = {}
    for row in network["network"]:
        name = f"{row['case']['backbone']}@{row['case']['input']}"
        cases[(name, row["attention"], "train")] = row["train_step"]["median_ms"]
        cases[(name, row["attention"], "infer")] = row["inference"]["median_ms"]
    cases[("default model", "ppcr", "train")] = end["end_to_end"]["step"]["median_ms"]
    return cases


def pytorch_turn(args):
    report = run_json([sys.executable, os.path.join(HERE, "pytorch_reference.py"),
                       "--suites", "network,end-to-end", "--threads", str(args.threads),
                       "--runs", str(args.runs), "--warmup", str(args.warmup),
                       "--resnet18-input", str(args.resnet18_input), "--json"])
    cases = {}
    for row in report["network"]:
        name = f"{row['backbone']}@{row['input']}"
        cases[(name, row["attention"], "train")] = row["train_step"]["median_ms"]
        cases[(name, row["attention"], "infer")] = row["inference"]["median_ms"]
    cases[("default model", "ppcr", "train")] = report["end_to_end"]["step"]["median_ms"]
    return cases, report["torch"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ppcr", default=os.path.join(HERE, "..", "target", "release", "ppcr"))
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--resnet18-input", type=int, default=112)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.turns < 1 or args.runs < 1 or args.warmup < 0:
        sys.exit("--turns and --runs must be at least 1, --warmup at least 0")
    if not os.path.exists(args.ppcr):
        sys.exit(f"no ppcr binary at {args.ppcr}; build it with `cargo build --release`")

    ppcr_turns, torch_turns, version = [], [], None
    for turn in range(args.turns):
        order = ["ppcr", "torch"] if turn % 2 == 0 else ["torch", "ppcr"]
        for who in order:
            if who == "ppcr":
                ppcr_turns.append(ppcr_turn(args))
            else:
                cases, version = pytorch_turn(args)
                torch_turns.append(cases)
        print(f"turn {turn + 1} of {args.turns} done", file=sys.stderr)

    rows = []
    for key in ppcr_turns[0]:
        ours = [t[key] for t in ppcr_turns]
        theirs = [t[key] for t in torch_turns]
        speed = statistics.median(p / o for o, p in zip(ours, theirs))
        rows.append({"case": key[0], "attention": key[1], "what": key[2], "ppcr_ms": ours,
                     "pytorch_ms": theirs, "ppcr_speed": speed})
    # PPCR's cost over the plain network, per framework, median over turns.
    for row in rows:
        plain = (row["case"], "none", row["what"])
        if row["attention"] == "ppcr" and plain in ppcr_turns[0]:
            row["ppcr_over_plain"] = statistics.median(
                t[(row["case"], "ppcr", row["what"])] / t[plain] for t in ppcr_turns)
            row["pytorch_ppcr_over_plain"] = statistics.median(
                t[(row["case"], "ppcr", row["what"])] / t[plain] for t in torch_turns)
    if args.json:
        print(json.dumps({"torch": version, "threads": args.threads, "turns": args.turns,
                          "runs": args.runs, "rows": rows}, indent=2))
        return
    print(f"ppcr against PyTorch {version} on the CPU ({args.threads} threads), {args.turns} "
          f"alternating turns, each the median of {args.runs} runs")
    print(f"{'case':<16} {'attn':<5} {'step':<6} {'ppcr ms (turns)':<26} "
          f"{'PyTorch ms (turns)':<26} {'ppcr speed':>10}")
    for row in rows:
        ours = " / ".join(f"{v:.1f}" for v in row["ppcr_ms"])
        theirs = " / ".join(f"{v:.1f}" for v in row["pytorch_ms"])
        print(f"{row['case']:<16} {row['attention']:<5} {row['what']:<6} {ours:<26} "
              f"{theirs:<26} {row['ppcr_speed']:>9.2f}x")
    print("\nPPCR over the plain network (median over turns): ppcr / PyTorch")
    for row in rows:
        if "ppcr_over_plain" in row:
            print(f"{row['case']:<16} {row['what']:<6} {row['ppcr_over_plain']:.3f} / "
                  f"{row['pytorch_ppcr_over_plain']:.3f}")
    print("\nThe default model's images/s: 32 / step; ppcr speed above 1 means ppcr is faster.")


if __name__ == "__main__":
    main()

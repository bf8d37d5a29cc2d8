#!/usr/bin/env python3
"""What an attention unit adds to the plain network, steadied by repetition: runs
`ppcr bench --suite network --attn none,UNIT` (each run already alternates the two networks and
takes the median of --runs rounds) --repeats times, and prints per backbone the median and range
of the repeats' training and inference ratios (unit / plain). With several binaries (e.g. two
builds) it alternates them repeat by repeat, so all are measured in one sitting.

Usage: python3 bench/unit_overhead.py [--ppcr target/release/ppcr ...] [--attn ppcr]
           [--repeats 8] [--runs 5]
"""

import argparse
import json
import statistics
import subprocess
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ppcr", action="append", help="ppcr binaries (default: target/release/ppcr)")
    parser.add_argument("--attn", default="ppcr", help="the unit against the plain network")
    parser.add_argument("--repeats", type=int, default=8, help="network-suite runs per binary")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds within each run")
    args = parser.parse_args()
    if args.attn == "none" or "," in args.attn:
        sys.exit("unit_overhead.py: --attn takes one unit other than none")
    binaries = args.ppcr or ["target/release/ppcr"]
    ratios = {binary: {} for binary in binaries}
    for repeat in range(args.repeats):
        for binary in binaries:
            command = [binary, "bench", "--suite", "network", "--attn", f"none,{args.attn}",
                       "--runs", str(args.runs), "--json"]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"unit_overhead.py: {' '.join(command)} failed:\n{result.stderr}")
            for entry in json.loads(result.stdout)["network"]:
                if entry["attention"] != args.attn:
                    continue
                case = f"{entry['case']['backbone']}@{entry['case']['input']}"
                series = ratios[binary].setdefault(case, {"train": [], "infer": []})
                series["train"].append(entry["train_ratio"])
                series["infer"].append(entry["inference_ratio"])
            print(f"repeat {repeat + 1}/{args.repeats} of {binary} done", file=sys.stderr)
    print(f"{args.attn} / none, median (range) of {args.repeats} repeats, each the median of "
          f"{args.runs} alternating rounds")
    print(f"{'binary':<32} {'case':<14} {'train':<22} {'inference':<22}")
    for binary in binaries:
        for case, series in ratios[binary].items():
            cells = []
            for step in ("train", "infer"):
                values = series[step]
                cells.append(f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})")
            print(f"{binary:<32} {case:<14} {cells[0]:<22} {cells[1]:<22}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The test metrics of every run of one or more `ppcr compare` folders at their last epoch (no
choice on validation), per unit: mean and standard deviation over seeds, and PPCR minus each
other unit paired over seeds with a two-sided paired t-test (as `ppcr compare` pairs them).

It runs `ppcr eval --checkpoint RUN --latest --json` on each finished run folder (every run
keeps its last epoch beside its best), so the comparison's runs need not be trained again.

Usage: python3 bench/last_epoch_compare.py [--ppcr target/release/ppcr]
           FOLDER[:LABEL] [FOLDER[:LABEL] ...]
A LABEL names a folder's units in the table (e.g. a folder trained with --supcon-weight 1 as
`breastmnist-40ep-supcon:+SupCon`). Needs only the Python standard library.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paired_compare import paired_t_test  # noqa: E402

METRICS = [("accuracy", "ACC"), ("auc_macro", "AUC"), ("balanced_accuracy", "BACC")]


def last_epoch_metrics(ppcr, run):
    out = subprocess.run([ppcr, "eval", "--checkpoint", run, "--latest", "--json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{run}: ppcr eval failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ppcr", default="target/release/ppcr")
    parser.add_argument("folders", nargs="+")
    args = parser.parse_args()
    by_unit = {}
    for spec in args.folders:
        folder, _, label = spec.partition(":")
        runs = os.path.join(folder, "runs")
        # `ppcr compare` names its run folders UNIT-sSEED.
        for name in sorted(os.listdir(runs)):
            path = os.path.join(runs, name)
            if not os.path.isfile(os.path.join(path, "metrics.json")):
                continue
            attention, _, seed = name.rpartition("-s")
            unit = attention + (f" {label}" if label else "")
            metrics = last_epoch_metrics(args.ppcr, path)
            by_unit.setdefault(unit, {})[int(seed)] = metrics
    print("unit".ljust(16) + "".join(f"{short:>18}" for _, short in METRICS) + "  seeds")
    for unit, runs in by_unit.items():
        cells = []
        for key, _ in METRICS:
            values = [runs[seed][key] for seed in sorted(runs)]
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            cells.append(f"{statistics.mean(values):.3f} +- {sd:.3f}".rjust(18))
        print(unit.ljust(16) + "".join(cells) + f"  {len(runs)}")
    for reference in [u for u in by_unit if u.startswith("ppcr")]:
        print(f"\n{reference} minus each unit, paired over seeds (mean difference, p)")
        for unit, runs in by_unit.items():
            if unit == reference:
                continue
            seeds = sorted(set(runs) & set(by_unit[reference]))
            cells = []
            for key, _ in METRICS:
                diffs = [by_unit[reference][s][key] - runs[s][key] for s in seeds]
                p = paired_t_test(diffs)
                p_text = "  n/a" if p is None or math.isnan(p) else f"{p:.3f}"
                cells.append(f"{statistics.mean(diffs):+.3f} p {p_text}".rjust(18))
            print(unit.ljust(16) + "".join(cells) + f"  {len(seeds)}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Pair two `ppcr compare` folders run over the same seeds: each row of the second (for example
PPCR trained with --supcon-weight) against every row of the first, per metric, as the mean
difference over seeds and a two-sided paired t-test (the test `ppcr compare` itself applies).

Usage: python3 bench/paired_compare.py FIRST/compare.json SECOND/compare.json [--label NAME]
Needs only the Python standard library.
"""

import argparse
import json
import math

METRICS = ["accuracy", "balanced_accuracy", "auc_macro", "f1_macro", "kappa", "ece"]


def betacf(a, b, x):
    """Continued fraction of the regularised incomplete beta function (Numerical Recipes)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > 1e-300 else 1e-300
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > 1e-300 else 1e-300)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > 1e-300 else 1e-300
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def betainc(a, b, x):
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log(1.0 - x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * betacf(a, b, x) / a
    return 1.0 - front * betacf(b, a, 1.0 - x) / b


def paired_t_test(differences):
    """Two-sided p-value, or None with fewer than two values or no spread."""
    n = len(differences)
    if n < 2:
        return None
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    if sd == 0.0:
        return None
    t = mean / (sd / math.sqrt(n))
    df = n - 1
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first")
    parser.add_argument("second")
    parser.add_argument("--label", default=None, help="name of the second folder's rows")
    args = parser.parse_args()
    first = json.load(open(args.first))
    second = json.load(open(args.second))
    # Sanity check of the t distribution: p for differences 1, 2, 3 is 0.07418 (2 df).
    assert abs(paired_t_test([1.0, 2.0, 3.0]) - 0.0741799) < 1e-6
    print("| candidate | baseline | metric | mean difference | p-value | seeds |")
    print("|---|---|---|---|---|---|")
    for candidate in second["rows"]:
        name = args.label or candidate["attention"]
        for baseline in first["rows"]:
            for metric in METRICS:
                x = dict(zip(baseline["seeds"], baseline["metrics"][metric]["values"]))
                y = dict(zip(candidate["seeds"], candidate["metrics"][metric]["values"]))
                seeds = sorted(set(x) & set(y))
                differences = [y[s] - x[s] for s in seeds
                               if x[s] is not None and y[s] is not None]
                if not differences:
                    continue
                p = paired_t_test(differences)
                mean = sum(differences) / len(differences)
                p_text = "n/a" if p is None else f"{p:.3f}"
                print(f"| {name} | {baseline['attention']} | {metric} | {mean:+.4f} | {p_text} "
                      f"| {len(differences)} |")


if __name__ == "__main__":
    main()

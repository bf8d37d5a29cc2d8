#!/usr/bin/env python3
"""Writes the seed corpus of the `npz` fuzz target: tiny MedMNIST-shaped .npz files.

Run from the repository root: `python3 fuzz/make_npz_seeds.py` (needs numpy). The other
targets' seeds come from `cargo test --release -- --ignored write_fuzz_seeds`.
"""
import io
import os

import numpy as np

OUT = os.path.join("fuzz", "seeds", "npz")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(0)


def arrays(shape, classes):
    out = {}
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        out[f"{split}_images"] = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        out[f"{split}_labels"] = (np.arange(n) % classes).reshape(n, 1).astype(np.int64)
    return out


for name, shape, classes, compressed in (
    ("grey_stored", (4, 4), 2, False),
    ("grey_deflated", (4, 4), 2, True),
    ("rgb_stored", (3, 3, 3), 3, False),
    ("rgb_deflated", (3, 3, 3), 2, True),
):
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays(shape, classes))
    with open(os.path.join(OUT, name + ".npz"), "wb") as f:
        f.write(buffer.getvalue())

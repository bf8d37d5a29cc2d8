#!/usr/bin/env python3
"""`ppcr import` against torchvision itself: the same class probabilities on real images.

For each of resnet18, resnet34 and resnet50: builds torchvision's network with random weights
and random BatchNorm statistics (so a wrong mapping of any tensor shows; ImageNet weights would
need a download), saves its state dict with torch.save, imports it with `ppcr import`, and
compares `ppcr predict --csv` with torchvision's softmax on the same images. Each image is first
cropped and resized to 224x224 RGB with Pillow and saved as PNG, so both read the same pixels;
both normalise with ImageNet's mean and std. Prints the largest absolute difference per network
and exits non-zero when it exceeds --tolerance (default 1e-5).

Usage: python3 bench/torchvision_check.py [--ppcr target/release/ppcr] [IMAGE ...]
       (default images: the PBC blood-cell test fixtures in tests/fixtures/data/pbc_mini/test)
Needs torch, torchvision and pillow (pip install torch torchvision pillow).
"""

import argparse
import csv
import glob
import io
import os
import subprocess
import sys
import tempfile

import torch
import torchvision
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def randomise(model, generator):
    """Random weights everywhere and random BatchNorm statistics and affine parameters."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
        model.fc.bias.normal_(0.0, 0.05, generator=generator)


def scale_classifier(model, inputs, generator):
    """Random classifier weights sized so the logits have a standard deviation near 1: with
    random weights the pooled features of a deep network are large, the softmax saturates and
    a comparison of probabilities would compare mostly 0s and 1s."""
    features = {}
    hook = model.avgpool.register_forward_hook(lambda _m, _i, out: features.update(x=out.flatten(1)))
    with torch.no_grad():
        model(inputs)
        hook.remove()
        scale = 1.0 / (features["x"].pow(2).mean().sqrt().item() * model.fc.in_features ** 0.5)
        model.fc.weight.normal_(0.0, scale, generator=generator)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ppcr", default=os.path.join(ROOT, "target/release/ppcr"))
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("images", nargs="*")
    args = parser.parse_args()
    images = args.images or sorted(
        glob.glob(os.path.join(ROOT, "tests/fixtures/data/pbc_mini/*/*/*.jpg"))
    )[:8]
    if not images:
        sys.exit("no images given and no fixtures found")
    torch.set_num_threads(2)
    worst_overall = 0.0
    with tempfile.TemporaryDirectory() as work:
        pngs = []
        for index, path in enumerate(images):
            image = Image.open(path).convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((224, 224), Image.BILINEAR)
            png = os.path.join(work, f"image{index}.png")
            image.save(png)
            pngs.append(png)
        pixels = torch.stack(
            [torchvision.transforms.functional.pil_to_tensor(Image.open(p)) for p in pngs]
        ).float() / 255.0
        for name in ["resnet18", "resnet34", "resnet50"]:
            generator = torch.Generator().manual_seed(0)
            torch.manual_seed(0)
            model = getattr(torchvision.models, name)()
            randomise(model, generator)
            model.eval()
            scale_classifier(model, (pixels - MEAN) / STD, generator)
            with torch.no_grad():
                expected = torch.softmax(model((pixels - MEAN) / STD), dim=1)
            weights = os.path.join(work, f"{name}.pth")
            torch.save(model.state_dict(), weights)
            run = os.path.join(work, f"{name}-run")
            subprocess.run(
                [args.ppcr, "import", weights, "--backbone", name, "--out", run],
                check=True, capture_output=True,
            )
            result = subprocess.run(
                [args.ppcr, "predict", "--checkpoint", run, "--csv", *pngs],
                check=True, capture_output=True, text=True,
            )
            rows = list(csv.reader(io.StringIO(result.stdout)))[1:]
            got = torch.tensor([[float(v) for v in row[2:]] for row in rows])
            worst = (got - expected).abs().max().item()
            agree = (got.argmax(1) == expected.argmax(1)).float().mean().item()
            print(f"{name}: {len(pngs)} images, max |p_ppcr - p_torchvision| = {worst:.2e}, "
                  f"top-1 agreement {agree:.0%}, probabilities {expected.min().item():.2e} to "
                  f"{expected.max().item():.2e}")
            worst_overall = max(worst_overall, worst)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    if worst_overall > args.tolerance:
        sys.exit(f"difference {worst_overall:.2e} above the tolerance {args.tolerance:.0e}")


if __name__ == "__main__":
    main()

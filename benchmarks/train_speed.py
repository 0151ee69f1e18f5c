"""Training-step and target-assignment speed of the FCOS library (run by hand).

    .venv/bin/python benchmarks/train_speed.py [--model model.py]
        [--size 128] [--batch 8] [--steps 20] [--device cpu]

Prints one JSON line: seconds per training step (forward_raw + FCOS losses + backward +
SGD step) and per target computation, for a random batch with a few boxes per image.
The default model is the paper genotype compiled with the tiny trunk, 32 wide.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from nasfcos.fcos.losses import STRIDES, FcosConfig, compute_targets, fcos_losses
from nasfcos.fcos.train import build_detector
from nasfcos.modelfile import ModelInfo, load_model_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="compiled model.py (default: nas_fcos_fpn, tiny trunk, @32)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.model is None:
        from nasfcos.compiler import CompileOptions, compile_genotype
        from nasfcos.genotypes import load_paper_genotype

        path = Path(tempfile.mkdtemp()) / "model.py"
        path.write_text(compile_genotype(load_paper_genotype("nas_fcos_fpn"), CompileOptions(
            fpn_channels=32, num_classes=args.classes, detector=True, backbone="tiny")))
        args.model = str(path)
    module = load_model_file(args.model)
    model = build_detector(module, args.classes).to(device).train()
    cfg = FcosConfig(reg_units=ModelInfo.from_module(module).box_units.name)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    images = torch.rand(args.batch, 3, args.size, args.size, device=device)
    xy0 = torch.rand(args.batch, 4, 2, device=device) * args.size * 0.5
    wh = torch.rand(args.batch, 4, 2, device=device) * args.size * 0.5 + 4
    boxes = list(torch.cat([xy0, xy0 + wh], dim=2))
    labels = [torch.randint(0, args.classes, (4,), device=device) for _ in range(args.batch)]

    def step() -> None:
        cls, reg, ctr = model.forward_raw(images)
        loss = sum(fcos_losses(cls, reg, ctr, boxes, labels, cfg).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    per_step = (time.perf_counter() - t0) / args.steps
    sizes = [(-(-args.size // s), -(-args.size // s)) for s in STRIDES]
    t0 = time.perf_counter()
    for _ in range(args.steps):
        compute_targets(boxes, labels, sizes, STRIDES)
    sync()
    per_targets = (time.perf_counter() - t0) / args.steps
    print(json.dumps({"device": str(device), "size": args.size, "batch": args.batch,
                      "train_step_s": round(per_step, 5), "targets_s": round(per_targets, 5),
                      "images_per_s": round(args.batch / per_step, 1)}))


if __name__ == "__main__":
    main()

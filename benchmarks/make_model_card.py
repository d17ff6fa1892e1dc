"""Write a model card for a zoo checkpoint: its training record and top-1 on a full test set
at many sizes, with and without BN calibration (calibration on training images).

    python benchmarks/make_model_card.py models/cifar_resnet20_mixsize_dplus.pth \
        --train ../shared/data/cifar10/train --test ../shared/data/cifar10/test
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from mmdeploy.calib.workflow import calibrate_to_bundle
from mmdeploy.evaluate import evaluate_target

SIZES = [16, 20, 24, 28, 32, 40, 48]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    ap.add_argument("--title", default=None)
    ap.add_argument("--notes", default="", help="extra markdown appended to the card")
    args = ap.parse_args()
    ckpt_path = Path(args.checkpoint)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    mm = ckpt["mmdeploy"]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        calibrate_to_bundle(ckpt_path, args.sizes, args.train, bundle, batches=200, batch_size=64, augment=True, seed=0)
        results = evaluate_target(bundle, args.test, engines=["torch"], precisions=["fp32"], device="cpu")
    before = {r.size: r.top1 for r in results if not r.calibrated}
    after = {r.size: r.top1 for r in results if r.calibrated}
    n_test = results[0].images
    regime = mm["regime"]
    mix = ", ".join(f"{s['size']}px p={s['prob']:g} batch {s['batch']} x{s['duplicates']}" for s in regime["sizes"])
    title = args.title or ckpt_path.stem
    lines = [
        f"# {title}",
        "",
        f"- **Architecture**: `{mm['arch']}` ({sum(v.numel() for k, v in ckpt['state_dict'].items() if 'running' not in k and 'num_batches' not in k):,} parameters), reference-code config `{ckpt['config']}`",
        f"- **Regime**: {regime['kind']} ({mix}); SGD momentum 0.9, lr {mm['optimizer']['lr']} {mm['optimizer']['schedule']} with {mm['optimizer']['warmup_steps']} warm-up steps, "
        f"weight decay {mm['optimizer']['weight_decay']} on conv/linear weights only, gradient smoothing {'on' if mm['optimizer']['grad_smoothing'] else 'off'}",
        f"- **Training**: {mm['steps']} optimizer steps = {mm['epochs']} epochs of the 50,000 CIFAR-10 training images; {mm['wall_s'] / 60:.1f} min of training steps "
        f"on {mm['device']} ({mm['threads']} threads, {mm['precision']}), {mm['images_per_s']:.0f} network inputs/s",
        f"- **Command**: `{mm['command']}`",
        f"- **Files**: `{ckpt_path.name}` (reference-code dict, loads with `torch.load(weights_only=True)`), `{ckpt_path.with_suffix('.safetensors').name}`",
        "",
        f"## Top-1 on the CIFAR-10 test set ({n_test:,} images), torch fp32",
        "",
        "BN calibration: `mmdeploy calibrate` with 200 batches of 64 augmented training images per size (seed 0); "
        "'checkpoint BN' uses the statistics stored in the checkpoint.",
        "",
        "| size | checkpoint BN | calibrated BN | gain |",
        "|---:|---:|---:|---:|",
    ]
    for s in args.sizes:
        lines.append(f"| {s} | {before[s]:.2f} | {after[s]:.2f} | {after[s] - before[s]:+.2f} |")
    lines += ["", f"Measured by: `python benchmarks/make_model_card.py {ckpt_path} --train {args.train} --test {args.test}` "
              f"({(time.time() - t0) / 60:.1f} min on {torch.get_num_threads()} CPU threads).", ""]
    if args.notes:
        lines += [args.notes, ""]
    card = ckpt_path.with_suffix(".md")
    card.write_text("\n".join(lines))
    (ckpt_path.with_suffix(".results.json")).write_text(json.dumps({"before": before, "after": after, "images": n_test}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Write a model card for a zoo checkpoint: its training record and top-1 on a full test set
at many sizes, with and without BN calibration (calibration on training images).

    python benchmarks/make_model_card.py models/cifar_resnet20_mixsize_dplus.pth \
        --train ../shared/data/cifar10/train --test ../shared/data/cifar10/test \
        --baseline models/cifar_resnet20_fixed32.results.json

--baseline (the results.json this script wrote for a fixed-size baseline) adds the paper's comparison: the calibrated
mixed-size model against the baseline at every size, and the method's two goals (within 0.3 pt of the baseline at its
training size; a smaller size within 0.3 pt of the baseline's best).
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
    ap.add_argument("--baseline", default=None, help="a fixed-size baseline's .results.json: adds the comparison and the goals")
    ap.add_argument("--tolerance", type=float, default=0.3, help="top-1 points for 'matches' in the goals")
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
        f"on {mm['device']} ({mm['threads']} thread{'s' if mm['threads'] > 1 else ''}, {mm['precision']}), {mm['images_per_s']:.0f} network inputs/s",
        f"- **Command**: `{mm['command']}`",
        *_segments(ckpt),
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
              f"({(time.time() - t0) / 60:.1f} min on {torch.get_num_threads()} CPU thread{'s' if torch.get_num_threads() > 1 else ''}).", ""]
    if args.baseline:
        lines += _comparison(after, json.loads(Path(args.baseline).read_text()), args.tolerance, Path(args.baseline).name)
    if args.notes:
        lines += [args.notes, ""]
    card = ckpt_path.with_suffix(".md")
    card.write_text("\n".join(lines))
    (ckpt_path.with_suffix(".results.json")).write_text(json.dumps({"before": before, "after": after, "images": n_test,
                                                                       "training_size": mm.get("training_size")}, indent=1) + "\n")
    print("\n".join(lines))


def _segments(ckpt: dict) -> list[str]:
    """A resumed run: each segment's command (the first one started it), and the throughput caveat."""
    history = [c for c in ckpt.get("train_state", {}).get("history", []) if c]
    if not history:
        return []
    lines = [f"- **Segments**: the run was stopped by `--max-minutes` and resumed {len(history)} times (each resume replays the same batches, "
             "augmentation and learning rate as an uninterrupted run); the throughput above averages every segment, also those "
             "that shared the machine. Earlier segments' commands:"]
    lines += [f"  - `{c}`" for c in history]
    choice = ckpt["mmdeploy"].get("precision_choice")
    if choice:
        lines.append(f"- **Precision of the last segment**: {choice['precision']} ({choice['reason']})")
    return lines


def _comparison(after: dict, base: dict, tol: float, base_name: str) -> list[str]:
    """The calibrated mixed-size model against a baseline (its best of checkpoint/calibrated BN per size), and the goals."""
    best = {int(s): max(base["before"][str(s)], base["after"][str(s)]) for s in base["before"]}
    train = int(base.get("training_size") or 32)
    sizes = [s for s in sorted(after) if s in best]
    lines = ["## Against the fixed-size baseline", "",
             f"Calibrated mixed-size vs the baseline `{base_name}` (best of its checkpoint and calibrated BN per size), same test set:",
             "", "| size | this model, calibrated | baseline (best) | difference |", "|---:|---:|---:|---:|"]
    lines += [f"| {s} | {after[s]:.2f} | {best[s]:.2f} | **{after[s] - best[s]:+.2f}** |" for s in sizes]
    at_train = after.get(train, float("nan")) - best[train]
    top = max(best.values())
    smaller = [s for s in sizes if s < train and after[s] >= top - tol - 1e-9]
    lines += ["", f"- Goal 1, within {tol:g} pt of the baseline at its training size {train} px: {after.get(train, float('nan')):.2f} vs "
              f"{best[train]:.2f} ({at_train:+.2f} pt): **{'met' if at_train >= -tol - 1e-9 else 'not met'}**.",
              f"- Goal 2, a smaller size within {tol:g} pt of the baseline's best ({top:.2f}): "
              + (f"**met** at {smaller[0]} px ({after[smaller[0]]:.2f}; {(train / smaller[0]) ** 2:.2f}x fewer pixels)."
                 if smaller else "**not met**; smaller sizes against that best: "
                 + ", ".join(f"{s} px at {after[s] - top:+.2f} pt" for s in sizes if s < train)[:200] + "."), ""]
    return lines


if __name__ == "__main__":
    main()

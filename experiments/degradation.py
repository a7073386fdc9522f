"""The paper's degradation experiment (He et al. 2015, Fig. 1 and Fig. 6) on the compiled models.

Trains plain20, plain56, resnet20 and resnet56 with `resnetc train`'s recipe on one dataset, draws their
training and test error per epoch (docs/degradation.png), then measures the trained resnet20 through every
backend (docs/degradation.json holds every figure). Without --data it uses scikit-learn's digits (shipped
inside the package, no download), upsampled to --size.

    python experiments/degradation.py                        # the committed figure: digits, 2-core CPU
    python experiments/degradation.py --data cifar10.npz --epochs 164 --size 32 --augment crop,flip --padding 4
                                                             # the paper's recipe (64k iterations at batch 128)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from resnetc.train.accuracy import backend_accuracy  # noqa: E402
from resnetc.train.accuracy import markdown_table as accuracy_table  # noqa: E402
from resnetc.train.data import digits  # noqa: E402
from resnetc.train.figures import curves_figure, responses_figure  # noqa: E402
from resnetc.train.job import train  # noqa: E402
from resnetc.train.loop import Recipe  # noqa: E402
from resnetc.train.probe import probe  # noqa: E402

MODELS = ("plain20", "plain56", "resnet20", "resnet56")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="an .npz dataset (default: scikit-learn's digits)")
    parser.add_argument("--size", type=int, default=16, help="digits: upsampled to SIZE x SIZE (default 16)")
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--augment", default="crop", help="digits are not mirror-symmetric: crop only by default")
    parser.add_argument("--padding", type=int, default=2, help="crop padding (the paper: 4 of 32 pixels)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--runs", default="runs/degradation", help="weights and logs (default runs/degradation)")
    parser.add_argument("--figure", default="docs/degradation.png")
    parser.add_argument("--responses", default="docs/responses.png", help="Fig. 7: the trained 3x3 layers' responses")
    parser.add_argument("--summary", default="docs/degradation.json")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args()


def main() -> int:
    args = _arguments()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) if args.data else runs / f"digits{args.size}.npz"
    if not args.data:
        np.savez(data, **digits(args.size))
    augment = () if args.augment == "none" else tuple(args.augment.split(","))
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, augment=augment, crop_padding=args.padding)
    histories, seconds, overrides = {}, {}, {}
    for name in args.models:
        started = time.perf_counter()
        result = train(
            ROOT / "specs" / f"{name}.yaml",
            data,
            runs,
            recipe,
            num_classes=10 if not args.data else None,
            in_channels=1 if not args.data else None,
            device=args.device,
            progress=not args.quiet,
        )
        seconds[name] = time.perf_counter() - started
        histories[name] = [asdict(epoch) for epoch in result.history]
        overrides[name] = result.overrides
        last = result.history[-1]
        print(f"{name}: final train error {last.train_error:.2%}, test error {last.test_error}, {seconds[name]:.0f} s")
    title = f"{data.name}: {args.epochs} epochs, batch {args.batch_size}, lr 0.1 ÷10 at 50% and 75%"
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    curves_figure(histories, args.figure, title)
    responses = _responses(args.models, data, runs, overrides, args.responses)
    summary: dict[str, object] = {
        "command": " ".join(["python", "experiments/degradation.py", *sys.argv[1:]]),
        "data": data.name,
        "recipe": asdict(recipe),
        "seconds": seconds,
        "final": {
            name: {
                "train_error": epochs[-1]["train_error"],
                "test_error": epochs[-1]["test_error"],
                "best_test_error": min((e["test_error"] for e in epochs if e["test_error"] is not None), default=None),
                # Fig. 6's lines are the epochs' errors; the last 10% of epochs, averaged, are less noisy
                "train_error_last_10pct": float(
                    np.mean([e["train_error"] for e in epochs[-max(1, len(epochs) // 10) :]])
                ),
            }
            for name, epochs in histories.items()
        },
        "responses": responses,
        "epochs": histories,
    }
    if "resnet20" in histories:
        rows = backend_accuracy(
            ROOT / "specs" / "resnet20.yaml",
            runs / "resnet20.safetensors",
            data,
            num_classes=overrides["resnet20"]["num_classes"],
            in_channels=overrides["resnet20"]["in_channels"],
        )
        summary["backends"] = [asdict(row) for row in rows]
        tests = len(np.load(data)["y_test"])
        print(accuracy_table(rows, tests), end="")
    Path(args.summary).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.figure}, {args.responses} and {args.summary}")
    return 0


def _responses(
    models: list[str], data: Path, runs: Path, overrides: dict[str, dict], figure: str
) -> dict[str, dict[str, object]]:
    """Fig. 7: each trained model's 3x3 responses (std after BN, eval mode) on the first 256 test images, the
    figure, and per model the mean, the largest and each layer's value."""
    probes = [
        probe(
            ROOT / "specs" / f"{name}.yaml",
            batch=256,
            weights=runs / f"{name}.safetensors",
            data=data,
            **overrides[name],
        )
        for name in models
    ]
    title = f"{data.name}: std of each 3x3 layer's response (after BN, before ReLU), trained, 256 test images"
    responses_figure(probes, figure, title)
    found: dict[str, dict[str, object]] = {}
    for name, result in zip(models, probes, strict=True):
        stds = [layer.response_std for layer in result.layers if layer.response_std is not None]
        found[name] = {"mean": float(np.mean(stds)), "max": max(stds), "layers": stds}
        print(f"{name}: 3x3 responses, mean std {np.mean(stds):.3f}, largest {max(stds):.3f} over {len(stds)} layers")
    return found


if __name__ == "__main__":
    sys.exit(main())

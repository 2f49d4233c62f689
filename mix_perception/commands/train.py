"""Train g, a Lipschitz h or the base model of a smoothed h on your own labelled images.

    mix-perception train --data PATH --role standard|lipschitz|smoothing --out FILE [--epochs N]
                         [--device D] [--seed S] [--val PATH | --val-fraction F] [--size H W]
                         [--channels 1|3] [--arch cnn|<torchvision name>] [--sigma S] [--hflip]

PATH is an image folder (one subfolder per class, PNG/JPEG: torchvision's ImageFolder layout) or an .npz
("images", "labels", optional "class_names"); input shape and classes come from the data (--size,
--channels override). A held-out split (--val-fraction per class, seeded) is carved out unless --val
gives one. Recipes scale with the input: g is architectures.plain_cnn (pooled down to <= 4 pixels)
or a torchvision model by name; h (lipschitz) is the deel-torchlip CNN of
lipschitz_training.recipe_for (blocks by resolution, widths by channels), exported to plain torch
and proven by core.lipschitz; smoothing trains with noise sigma (default 0.25, as the embedded
model: the certified l2 radius sigma PhiInv(p) does not depend on the input size, so sigma follows the
radius you need, not the resolution). Writes FILE (checkpoint, core.models format) and FILE with
.json (the model card: data, class_names, input, recipe, per-epoch times, held-out clean and
certified accuracy). Deterministic for a seed on the same machine, torch version, device and threads.
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

from mix_perception.commands.arguments import fraction_below_one, positive_float, positive_int
from mix_perception.commands.errors import CommandError

ROLES = ("standard", "lipschitz", "smoothing")
DEFAULT_EPOCHS = {"standard": 15, "lipschitz": 6, "smoothing": 15}
SMALL_DATA = 5000  # fewer training images than this: batches of 32, so that an epoch still takes 150+ steps


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="image folder (one subfolder per class) or .npz")
    parser.add_argument("--role", choices=ROLES, required=True, help="g (standard), h (lipschitz), smoothed h's base")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pt); the card goes to .json")
    parser.add_argument("--epochs", type=positive_int, default=None, help="default: 15 (lipschitz 6)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N (default auto)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, split, noise (default 0)")
    parser.add_argument("--val", type=Path, default=None, help="held-out data (same layout); default: carved out")
    parser.add_argument("--val-fraction", type=fraction_below_one, default=0.2, help="held out per class (default 0.2)")
    parser.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), default=None, help="resize to H x W")
    parser.add_argument("--channels", type=int, choices=(1, 3), default=None, help="1 grey or 3 RGB (default: data)")
    parser.add_argument("--arch", default="cnn", help="g / smoothing: cnn (plain_cnn) or a torchvision model name")
    parser.add_argument("--sigma", type=positive_float, default=0.25, help="smoothing noise std (default 0.25)")
    parser.add_argument("--hflip", action="store_true", help="random horizontal flips in training (off by default)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="default: 128, or 32 under 5,000 images")
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads for torch (default 2)")
    parser.add_argument(
        "--certify-samples", type=positive_int, default=200, help="smoothing: estimation draws per held-out image"
    )


def _load(args):
    """(train ImageSet, held-out ImageSet) as the arguments ask."""
    from mix_perception.experiments import image_data
    from mix_perception.experiments.data import DataError

    try:
        data = image_data.load(args.data, args.size, args.channels)
        if args.val is None:
            return image_data.held_out_split(data, args.val_fraction, args.seed)
        shape = tuple(data.images.shape[2:])
        held_out = image_data.load(args.val, args.size or shape, args.channels or data.images.shape[1])
        image_data.check_compatible(data, held_out)
    except DataError as error:
        raise CommandError(str(error)) from None
    return data._replace(source={**data.source, "part": "train"}), held_out._replace(
        source={**held_out.source, "part": "held-out (--val)"}
    )


def _job(args, input_shape, num_classes: int, train_size: int):
    """roles.Job of the arguments: the recipe scaled to the input, the network to train."""
    from mix_perception.experiments import lipschitz_training, roles, training

    epochs = args.epochs or DEFAULT_EPOCHS[args.role]
    batch_size = args.batch_size or (128 if train_size >= SMALL_DATA else 32)
    if args.role == "lipschitz":
        try:
            recipe = lipschitz_training.recipe_for(input_shape, epochs=epochs, batch_size=batch_size, hflip=args.hflip)
        except ValueError as error:
            raise CommandError(str(error)) from None
        return roles.Job("lipschitz", recipe, training.Network(lipschitz_training.ARCH, num_classes))
    sigma = args.sigma if args.role == "smoothing" else None
    recipe = training.Recipe(args.role, epochs, batch_size=batch_size, hflip=args.hflip, sigma=sigma)
    return roles.Job(args.role, recipe, _network(args.arch, input_shape, num_classes))


def _network(arch: str, input_shape, num_classes: int):
    """training.Network for --arch: plain_cnn sized to the input, or a torchvision model (RGB only)."""
    from mix_perception.experiments import training

    if arch == "cnn":
        if min(input_shape[1:]) < 8:
            raise CommandError(f"images of {input_shape[1]}x{input_shape[2]} are too small: need at least 8x8")
        return training.plain_network(input_shape, num_classes)
    try:
        import torchvision
    except ImportError:
        raise CommandError(f"--arch {arch} needs torchvision, which is not installed; use --arch cnn") from None
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise CommandError(f"--arch {arch!r}: not 'cnn' nor a torchvision classification model (e.g. resnet18)")
    if input_shape[0] != 3:
        raise CommandError(f"--arch {arch} takes RGB images: add --channels 3")
    return training.Network(arch, num_classes)


def _command_line(args) -> str:
    """The command that reproduces this run (paths as given)."""
    parts = ["mix-perception", "train", "--data", str(args.data), "--role", args.role, "--out", str(args.out)]
    parts += ["--seed", str(args.seed), "--device", args.device, "--threads", str(args.threads)]
    optional = {"--epochs": args.epochs, "--val": args.val, "--channels": args.channels}
    optional |= {"--val-fraction": None if args.val else args.val_fraction}
    if args.role != "lipschitz":
        optional["--arch"] = args.arch
    if args.role == "smoothing":
        optional |= {"--sigma": args.sigma, "--certify-samples": args.certify_samples}
    parts += [f"{option} {value}" for option, value in optional.items() if value is not None]
    if args.size:
        parts += ["--size", *map(str, args.size)]
    return " ".join(parts + (["--hflip"] if args.hflip else []))


def _card(args, job, data, trained, metrics, measure_s: float) -> dict:
    """The model card written next to the checkpoint (format: docs/training.md)."""
    import torch

    train, held_out = data
    content = trained.content
    return {
        "name": args.out.stem,
        "file": args.out.name,
        "role": job.role,
        "architecture": {"arch": content["arch"], "options": content.get("arch_options")},
        "input": {
            "shape": list(content["input_shape"]),
            "pixels": "[0, 1]",
            "mean": content.get("mean"),
            "std": content.get("std"),
            "normalization": "applied inside the checkpoint (core.models.Normalized): feed [0, 1] pixels",
        },
        "class_names": list(train.class_names),
        "sigma": content.get("sigma"),
        "data": {
            "train": train.source,
            "held_out": held_out.source,
            "train_per_class": torch.bincount(train.labels, minlength=len(train.class_names)).tolist(),
            "held_out_per_class": torch.bincount(held_out.labels, minlength=len(train.class_names)).tolist(),
        },
        "recipe": job.recipe.describe(),
        "seed": args.seed,
        "command": _command_line(args),
        "device": str(next(trained.model.parameters()).device),
        "threads": args.threads,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "train_wall_time_s": round(trained.train_s, 1),
        "measure_wall_time_s": round(measure_s, 1),
        "metrics": {"split": "held-out", "images": int(held_out.labels.shape[0]), **metrics},
        "history": trained.history,
    }


def _summary(metrics: dict) -> str:
    text = f"held-out clean accuracy {metrics['clean_accuracy']:.2%}"
    if "certified_accuracy" in metrics:
        text += ", certified (l2) " + ", ".join(f"{v:.2%} at {r}" for r, v in metrics["certified_accuracy"].items())
    return text


def main(args) -> int:
    import torch

    from mix_perception.core.models import resolve_device
    from mix_perception.core.smoothing import SmoothingSettings
    from mix_perception.experiments import roles
    from mix_perception.experiments.batches import RunSettings

    try:
        device = resolve_device(args.device)
    except ValueError as error:
        raise CommandError(str(error)) from None
    if args.out.suffix == ".json":
        raise CommandError(f"--out {args.out}: name the checkpoint (.pt); the card is written next to it as .json")
    train, held_out = _load(args)
    input_shape, names = tuple(train.images.shape[1:]), train.class_names
    job = _job(args, input_shape, len(names), len(train.labels))
    counts = f"{len(train.labels)} training and {len(held_out.labels)} held-out images of {input_shape}"
    print(f"{args.data}: {counts}, classes {', '.join(names)}; {args.role}, {job.recipe.epochs} epochs on {device}")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(args.threads)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        trained = roles.train(job, train, args.seed, device)
        start = time.monotonic()
        smoothing = SmoothingSettings(args.sigma, n_select=32, n_estimate=args.certify_samples, delta=0.001)
        metrics = roles.measure(job, trained.model, held_out, smoothing, RunSettings(device=device, seed=args.seed))
        measure_s = time.monotonic() - start
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trained.content, args.out)
    card = _card(args, job, (train, held_out), trained, metrics, measure_s)
    args.out.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"{args.role}: trained in {trained.train_s:.0f} s: {_summary(metrics)}; wrote {args.out} and its .json card")
    return 0

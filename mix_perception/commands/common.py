"""What the mix-perception commands share: argument types (argparse `type=` callables that parse and
validate one value and raise argparse.ArgumentTypeError with the reason), option groups of evaluate
and calibrate, and the steps that turn those options into devices, data, models and settings
(CommandError with a one-line reason on bad input)."""

import argparse
import json
import math
from pathlib import Path

# --- argument types -------------------------------------------------------------------------------


def _integer_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _integer_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _integer_at_least(text, 0)


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def fraction_below_one(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def float_list(text: str) -> list[float]:
    """'0,0.5,1' -> [0.0, 0.5, 1.0] (finite numbers, at least one)."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected a comma-separated list of numbers")
    return [finite_float(p) for p in parts]


def alpha_list(text: str) -> list[float]:
    values = float_list(text)
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise argparse.ArgumentTypeError(f"alphas must lie in [0, 1], got {bad}")
    return sorted(set(values))


def name_list(choices):
    def parse(text: str) -> list[str]:
        if text.strip().lower() in ("", "none"):
            return []
        names = [p.strip().lower() for p in text.split(",") if p.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(choices)}")
        return list(dict.fromkeys(names))

    return parse


def transform_spec(text: str):
    """'none' | 'temperature:S' | 'mixednuts:S,P,C' -> core.transforms.Transform."""
    from mix_perception.core.transforms import Transform

    kind, _, values = text.strip().lower().partition(":")
    try:
        if kind == "none" and not values:
            return Transform()
        if kind == "temperature":
            return Transform("temperature", positive_float(values))
        if kind == "mixednuts":
            scale, power, offset = (finite_float(v) for v in values.split(","))
            if scale <= 0 or power < 1:
                raise argparse.ArgumentTypeError("mixednuts needs scale > 0 and power >= 1")
            return Transform("mixednuts", scale, power, offset)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected none, temperature:S or mixednuts:S,P,C; got {text!r}")


# --- option groups (evaluate and calibrate) -----------------------------------------------------------


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models")
    group.add_argument("--standard", default="default:standard", help="g: default:<name> or a model file")
    group.add_argument("--standard-arch", default=None, help="architecture of a bare state_dict for g")
    group.add_argument("--robust", default="default:robust", help="h: default:<name> or a model file")
    group.add_argument("--robust-arch", default=None, help="architecture of a bare state_dict for h")
    group.add_argument("--num-classes", type=positive_int, default=None, help="classes of bare state_dicts")
    group.add_argument("--mean", type=float_list, default=None, help="per-channel mean for model files (e.g. 0.286)")
    group.add_argument("--std", type=float_list, default=None, help="per-channel std for model files (e.g. 0.353)")
    group.add_argument(
        "--input-channels",
        type=positive_int,
        default=None,
        help="channels of the data, e.g. 1 to feed grey images to a 3-channel torchvision model",
    )


def add_data_options(parser: argparse.ArgumentParser, default="test", name="--data") -> None:
    parser.add_argument(
        name, default=default, help=f"test | calibration (shipped Fashion-MNIST splits) | file.npz (default {default})"
    )


def add_attack_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("attacks")
    group.add_argument("--norm", choices=("linf", "l2"), default="linf", help="PGD norm (default linf)")
    group.add_argument("--eps", type=nonnegative_float, default=0.1, help="PGD radius, pixels in [0, 1] (default 0.1)")
    group.add_argument("--steps", type=nonnegative_int, default=20, help="PGD steps (default 20)")
    group.add_argument("--step-size", type=positive_float, default=None, help="PGD step (default 2.5 eps / steps)")


def add_certify_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("certification (Gaussian smoothing of --smoothing-model)")
    group.add_argument(
        "--smoothing-model",
        default=None,
        help="base model of the smoothed h (default: default:smoothing when --robust is an embedded model, "
        "else --robust)",
    )
    group.add_argument("--smoothing-arch", default=None, help="architecture of a bare state_dict smoothing model")
    group.add_argument("--sigma", type=positive_float, default=0.25, help="smoothing noise std (default 0.25)")
    group.add_argument("--n-select", type=positive_int, default=64, help="noise draws choosing h's class (default 64)")
    group.add_argument("--n-estimate", type=positive_int, default=512, help="noise draws bounding h (default 512)")
    group.add_argument("--delta", type=positive_float, default=0.001, help="failure probability (default 0.001)")
    group.add_argument(
        "--mode", choices=("votes", "probs"), default="votes", help="votes: Clopper-Pearson; probs: Bernstein"
    )
    group.add_argument("--noise-batch-size", type=positive_int, default=1000, help="noisy inputs per forward")


def add_lipschitz_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("deterministic certification (a Lipschitz h)")
    group.add_argument(
        "--lipschitz-model", default="default:lipschitz", help="h with a provable l2 constant (default: embedded)"
    )
    group.add_argument("--lipschitz-arch", default=None, help="architecture of a bare state_dict Lipschitz model")


def add_run_options(parser: argparse.ArgumentParser, default_out: str) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    group.add_argument("--seed", type=int, default=0, help="seed of every random start and noise draw (default 0)")
    group.add_argument("--batch-size", type=positive_int, default=500, help="images per forward/attack batch")
    group.add_argument("--threads", type=nonnegative_int, default=0, help="torch CPU threads (default: torch's)")
    group.add_argument("--out", type=Path, default=Path(default_out), help=f"output folder (default {default_out})")
    group.add_argument("--quiet", action="store_true", help="no progress bars")


# --- steps ------------------------------------------------------------------------------------------


def setup_torch(args):
    """Threads and device; CommandError for a bad device."""
    import torch

    from mix_perception.cli import CommandError
    from mix_perception.core.models import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return resolve_device(args.device)
    except ValueError as error:
        raise CommandError(str(error)) from None


def load_one(spec: str, arch, args, device):
    from mix_perception.cli import CommandError
    from mix_perception.core.models import ModelLoadError, load_model

    try:
        return load_model(
            spec,
            arch=arch,
            num_classes=args.num_classes,
            mean=args.mean,
            std=args.std,
            device=device,
            input_channels=args.input_channels,
        )
    except (ModelLoadError, ValueError) as error:
        raise CommandError(str(error)) from None


def load_dataset(spec: str, limit, option: str = "--data"):
    from mix_perception.cli import CommandError
    from mix_perception.experiments.data import load_data

    try:
        data = load_data(spec, limit)
    except Exception as error:  # ValueError from our checks, DataError / OSError from the split files
        raise CommandError(f"{option} {spec}: {' '.join(str(error).split())}") from None
    if len(data.y) == 0:
        raise CommandError(f"{option} {spec}: no images")
    return data


def check_models(models: dict, data, device) -> int:
    """One forward of two images through each model: logits (2, C) with the same C > max label.
    Returns C; CommandError naming the model otherwise."""
    import torch

    from mix_perception.cli import CommandError
    from mix_perception.core.errors import first_line

    classes = set()
    for name, model in models.items():
        try:
            with torch.no_grad():
                out = model(data.x[:2].to(device))
        except Exception as error:
            shape = tuple(data.x.shape[1:])
            raise CommandError(f"{name} model fails on images of shape {shape}: {first_line(error)}") from None
        if out.dim() != 2 or out.shape[0] != min(2, len(data.x)):
            raise CommandError(f"{name} model returns {tuple(out.shape)}, expected logits (N, classes)")
        classes.add(int(out.shape[1]))
    if len(classes) != 1:
        raise CommandError(f"the models disagree on the number of classes: {sorted(classes)}")
    num_classes = classes.pop()
    if num_classes < 2:
        raise CommandError("the models must have at least 2 classes")
    if int(data.y.max()) >= num_classes or int(data.y.min()) < 0:
        raise CommandError(f"labels range {int(data.y.min())}..{int(data.y.max())} but the models have {num_classes}")
    return num_classes


def robust_spec(args) -> str:
    """--robust, with "default" read as the embedded robust model."""
    from mix_perception.core.models import default_spec

    return default_spec(args.robust, "robust")


def standard_spec(args) -> str:
    """--standard, with "default" read as the embedded standard model."""
    from mix_perception.core.models import default_spec

    return default_spec(args.standard, "standard")


def smoothing_spec(args) -> str:
    """--smoothing-model ("default": the embedded smoothing model); when absent, the embedded smoothing
    model if --robust is embedded, else --robust itself."""
    from mix_perception.core.models import DEFAULT_PREFIX, default_spec

    if args.smoothing_model:
        return default_spec(args.smoothing_model, "smoothing")
    robust = robust_spec(args)
    return f"{DEFAULT_PREFIX}smoothing" if robust.startswith(DEFAULT_PREFIX) else robust


SMOOTHING_OPTIONS = {
    "sigma": "--sigma",
    "n_select": "--n-select",
    "n_estimate": "--n-estimate",
    "delta": "--delta",
    "mode": "--mode",
    "batch_size": "--noise-batch-size",
}


def lipschitz_spec(args) -> str:
    """--lipschitz-model, with "default" read as the embedded Lipschitz model."""
    from mix_perception.core.models import default_spec

    return default_spec(args.lipschitz_model, "lipschitz")


def smoothing_settings(args):
    """SmoothingSettings from the certification options; CommandError naming the bad option."""
    from mix_perception.cli import CommandError
    from mix_perception.core.smoothing import SmoothingSettings

    try:
        return SmoothingSettings(
            sigma=args.sigma,
            n_select=args.n_select,
            n_estimate=args.n_estimate,
            delta=args.delta,
            mode=args.mode,
            batch_size=args.noise_batch_size,
        )
    except ValueError as error:
        field, _, reason = str(error).partition(" ")
        raise CommandError(f"{SMOOTHING_OPTIONS.get(field, field)} {reason}") from None


def pgd_config(args):
    from mix_perception.cli import CommandError
    from mix_perception.experiments.attacks import PGDConfig

    try:
        return PGDConfig(args.norm, args.eps, args.steps, args.step_size)
    except ValueError as error:
        raise CommandError(str(error)) from None


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")

"""Option groups that evaluate and calibrate share: models, data, attacks, smoothing certification,
the Lipschitz model, and how a run goes (device, seed, batch size, threads, output folder)."""

import argparse
from pathlib import Path

from mix_perception.commands import arguments


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models")
    group.add_argument("--standard", default="default:standard", help="g: default:<name> or a model file")
    group.add_argument("--standard-arch", default=None, help="architecture of a bare state_dict for g")
    group.add_argument("--robust", default="default:robust", help="h: default:<name> or a model file")
    group.add_argument("--robust-arch", default=None, help="architecture of a bare state_dict for h")
    group.add_argument("--num-classes", type=arguments.positive_int, default=None, help="classes of bare state_dicts")
    group.add_argument(
        "--mean", type=arguments.float_list, default=None, help="per-channel mean for model files (e.g. 0.286)"
    )
    group.add_argument(
        "--std", type=arguments.float_list, default=None, help="per-channel std for model files (e.g. 0.353)"
    )
    group.add_argument(
        "--input-channels",
        type=arguments.positive_int,
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
    group.add_argument(
        "--eps", type=arguments.nonnegative_float, default=0.1, help="PGD radius, pixels in [0, 1] (default 0.1)"
    )
    group.add_argument("--steps", type=arguments.nonnegative_int, default=20, help="PGD steps (default 20)")
    group.add_argument(
        "--step-size", type=arguments.positive_float, default=None, help="PGD step (default 2.5 eps / steps)"
    )


def add_certify_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("certification (Gaussian smoothing of --smoothing-model)")
    group.add_argument(
        "--smoothing-model",
        default=None,
        help="base model of the smoothed h (default: default:smoothing when --robust is an embedded model, "
        "else --robust)",
    )
    group.add_argument("--smoothing-arch", default=None, help="architecture of a bare state_dict smoothing model")
    group.add_argument(
        "--sigma", type=arguments.positive_float, default=0.25, help="smoothing noise std (default 0.25)"
    )
    group.add_argument(
        "--n-select", type=arguments.positive_int, default=64, help="noise draws choosing h's class (default 64)"
    )
    group.add_argument(
        "--n-estimate", type=arguments.positive_int, default=512, help="noise draws bounding h (default 512)"
    )
    group.add_argument(
        "--delta",
        type=arguments.positive_float,
        default=None,
        help="failure probability of the smoothing certificates (default 0.001); calibrate --goal risk: of the "
        "acceptance guarantee (default 0.05)",
    )
    group.add_argument(
        "--mode", choices=("votes", "probs"), default="votes", help="votes: Clopper-Pearson; probs: Bernstein"
    )
    group.add_argument("--noise-batch-size", type=arguments.positive_int, default=1000, help="noisy inputs per forward")


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
    group.add_argument("--batch-size", type=arguments.positive_int, default=500, help="images per forward/attack batch")
    group.add_argument(
        "--threads", type=arguments.nonnegative_int, default=0, help="torch CPU threads (default: torch's)"
    )
    group.add_argument("--out", type=Path, default=Path(default_out), help=f"output folder (default {default_out})")
    group.add_argument("--quiet", action="store_true", help="no progress bars")

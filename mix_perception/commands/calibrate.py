"""Choose alpha (and a transform of h's logits) for a stated goal; write a parameter file for the mixer node.

Goal "attack" (default): the highest clean accuracy whose accuracy under adaptive PGD through the
mixture (MIX; or the per-image worst of MIX, STD, ROB with --floor-attack worst) reaches the floor,
over a grid of alphas and transforms of h's logits (logit_scale: logits x S for each S of
--robust-logit-scales; or the MixedNUTS-style S * relu(LN(z) + C) ** P). Goal "certified": the
highest clean accuracy whose certified accuracy at --radius reaches the floor: with --certification
smoothing (or smoothing_theorem4) over alphas, for the smoothed h with confidence bounds (no transform:
those certificates need the plain smoothed h); with --certification lipschitz over alphas x logit
scales (--robust-logit-scales) together, for the deterministic certificate of a Lipschitz h
(--lipschitz-model). The floor is --min-robust (absolute) or --min-robust-ratio (fraction of h alone's
own number on the same images; default 0.9). A candidate reaches it when a one-sided Clopper-Pearson
lower bound on its robustness, at level 1 - --floor-delta (default 0.05), does, so that the floor also
holds on new images; --floor-delta 0 compares the measured number. Radii (--radius) are l2 on the
model's input, the data's [0, 1] pixels; the mixer publishes radii in each frame's own pixels, the same
space for 28x28 mono8 frames at input.std 1 (the parameter file's required_radius is read there).

The search runs on the calibration split (disjoint from the test split); the chosen setting is then
measured on the test split. Writes OUT/mixer_calibrated.yaml (load it with
`mix-perception run --config OUT/mixer_calibrated.yaml` or `ros2 launch ... params_file:=...`),
OUT/calibration.json and OUT/calibration.png. A logit scale becomes the node's robust_logit_scale
parameter; a MixedNUTS-style transform is written as OUT/robust_sharpened.pt, a TorchScript file of
the transformed h that the node loads as its robust_model.

Example (the embedded models, 500 calibration and 1,000 test images):

    mix-perception calibrate --limit 500 --test-limit 1000 --out calibration/
"""

import argparse
import dataclasses
import time
from pathlib import Path

from mix_perception.commands import arguments, calibrate_risk, from_options, option_groups
from mix_perception.commands.errors import CommandError
from mix_perception.commands.outputs import write_json
from mix_perception.core.names import CERTIFICATION_METHODS

DEFAULT_ALPHAS = "0.3,0.35,0.4,0.45,0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95,1"
DEFAULT_LOGIT_SCALES = "1,1.5,2,3,4"


def certification_method(text: str) -> str:
    """A method of core.names.CERTIFICATION_METHODS that certifies: lipschitz or a smoothing method."""

    methods = [m for m in CERTIFICATION_METHODS if m != "none"]
    if text not in methods:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(methods)}, got {text!r}")
    return text


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    option_groups.add_model_options(parser)
    _add_goal_options(parser)
    _add_grid_options(parser)
    option_groups.add_data_options(parser, "calibration", "--calibration-data")
    parser.add_argument("--limit", type=arguments.positive_int, default=None, help="first N calibration images")
    option_groups.add_data_options(parser, "test", "--test-data")
    parser.add_argument("--test-limit", type=arguments.positive_int, default=None, help="first N test images")
    parser.add_argument("--no-test", action="store_true", help="skip the test-split measurement")
    parser.add_argument(
        "--test-autoattack",
        action="store_true",
        help="also run AutoAttack (custom: apgd-ce, apgd-t) on the chosen mixture and on h alone, test split",
    )
    option_groups.add_attack_options(parser)
    option_groups.add_certify_options(parser)
    option_groups.add_lipschitz_options(parser)
    calibrate_risk.add_risk_options(parser)
    parser.add_argument("--yaml", type=Path, default=None, help="parameter file (default OUT/mixer_calibrated.yaml)")
    option_groups.add_run_options(parser, "calibration")


def _add_goal_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--goal",
        choices=("attack", "certified", "risk"),
        default="attack",
        help="attack | certified: choose alpha; risk: calibrate the safety verdict of a given alpha (default attack)",
    )
    floor = parser.add_mutually_exclusive_group()
    floor.add_argument("--min-robust", type=arguments.fraction, default=None, help="absolute floor in [0, 1]")
    floor.add_argument(
        "--min-robust-ratio",
        type=arguments.positive_float,
        default=None,
        help="floor as a fraction of h alone's attacked (or certified) accuracy on the same images (default 0.9)",
    )
    parser.add_argument(
        "--floor-delta",
        type=arguments.fraction_below_one,
        default=0.05,
        help="a candidate reaches the floor when the one-sided Clopper-Pearson lower bound on its robustness, "
        "at level 1 - this, does; 0 = the measured number itself (default 0.05)",
    )
    parser.add_argument(
        "--floor-attack",
        choices=("mix", "worst"),
        default="mix",
        help="goal attack: the floor applies to MIX, or to the worst of MIX/STD/ROB (default mix)",
    )
    parser.add_argument(
        "--search",
        choices=("ordered", "bisect"),
        default="ordered",
        help="goal attack: ordered = exact over the grid (attacks candidates by decreasing clean accuracy "
        "until one reaches the floor); bisect = fewer attacks, assumes robustness grows with alpha for a "
        "fixed transform (default ordered)",
    )
    parser.add_argument(
        "--radius",
        type=arguments.positive_float,
        default=None,
        help="goal certified: l2 radius on the model's input, the data's [0, 1] pixels (default 0.25); goal risk: "
        "the monitor's required_radius (default 0.1; the mixer's frame pixels = these for 28x28 mono8 frames)",
    )
    parser.add_argument(
        "--certification",
        type=certification_method,
        default="smoothing",
        help="goal certified: smoothing (Theorem 5) or smoothing_theorem4 (Theorem 4) on the smoothed "
        "--smoothing-model, or lipschitz: the deterministic certificate of --lipschitz-model with alpha and "
        "a logit scale (--robust-logit-scales) chosen together (default smoothing)",
    )


def _add_grid_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--alphas", type=arguments.alpha_list, default=arguments.alpha_list(DEFAULT_ALPHAS))
    parser.add_argument(
        "--transform",
        choices=("logit_scale", "mixednuts"),
        default="logit_scale",
        help="goal attack: the family of transforms of h's logits (default logit_scale)",
    )
    parser.add_argument(
        "--robust-logit-scales",
        type=arguments.positive_list,
        default=arguments.positive_list(DEFAULT_LOGIT_SCALES),
        help=f"h's logit scales S, comma list: logits x S (1 = none; MixedNUTS: its S; default {DEFAULT_LOGIT_SCALES})",
    )
    parser.add_argument("--powers", type=arguments.float_list, default=[1.0, 2.0], help="mixednuts P values (>= 1)")
    parser.add_argument("--offsets", type=arguments.float_list, default=[0.0, 1.0], help="mixednuts C values")


# --- main -----------------------------------------------------------------------------------------------


def main(args) -> int:
    if args.goal == "risk":
        return calibrate_risk.main(args)
    if args.radius is None:
        args.radius = 0.25
    settings = from_options.smoothing_settings(args)
    if args.transform == "mixednuts" and any(p < 1 for p in args.powers):
        raise CommandError("--powers must be >= 1")
    if args.min_robust_ratio is None and args.min_robust is None:
        args.min_robust_ratio = 0.9
    config = from_options.pgd_config(args)
    run = from_options.run_settings(args, from_options.setup_torch(args))
    calib = from_options.load_dataset(args.calibration_data, args.limit, "--calibration-data")
    test = None if args.no_test else from_options.load_dataset(args.test_data, args.test_limit, "--test-data")
    specs = {"standard": from_options.standard_spec(args)}
    models = {"standard": from_options.load_one(specs["standard"], args.standard_arch, args, run.device)}
    started = time.perf_counter()
    search = _search_attack if args.goal == "attack" else _search_certified
    result = search(args, models, specs, calib, config, settings, run)
    report = {
        "schema_version": 1,
        "config": _config(args, calib, test, specs, config, settings),
        "calibration": result.to_json(),
        "test": None,
        "parameter_file": None,
        "timing_s": {"search": time.perf_counter() - started},
    }
    if result.chosen is None:
        _write(args.out, report)
        raise CommandError(
            f"no candidate reaches the floor {result.floor.value:.4f} on {len(calib.y)} calibration images "
            f"(details in {args.out / 'calibration.json'}); lower the floor or widen --alphas/--robust-logit-scales"
        )
    if test is not None:
        started = time.perf_counter()
        measure = _test_attack if args.goal == "attack" else _test_certified
        report["test"] = measure(args, models, result.chosen, test, config, settings, run)
        report["timing_s"]["test"] = time.perf_counter() - started
    yaml_path = args.yaml or args.out / "mixer_calibrated.yaml"
    params = _write_node_file(args, result, models, specs, calib, yaml_path, settings)
    report["parameter_file"] = {"path": str(yaml_path), "parameters": params}
    written = _write(args.out, report)
    _print(report)
    for path in [yaml_path, *written]:
        print(f"wrote {path}")
    return 0


def _write(out: Path, report: dict) -> list:
    """Write OUT/calibration.json and OUT/calibration.png (when a candidate was attacked); the paths written."""
    from mix_perception.experiments import plots

    write_json(out / "calibration.json", report)
    png = plots.calibration_candidates(report["calibration"], out / "calibration.png")
    return [out / "calibration.json", *([png] if png is not None else [])]


def _floor(args, reference_value: float):
    """Floor of --min-robust, or --min-robust-ratio x h alone's number (at most 1), with --floor-delta."""
    from mix_perception.experiments.calibration import Floor

    if args.min_robust is not None:
        return Floor(float(args.min_robust), args.floor_delta)
    return Floor(min(1.0, float(args.min_robust_ratio) * reference_value), args.floor_delta)


def _search_attack(args, models: dict, specs: dict, calib, config, settings, run):
    """Calibration of goal attack on the calibration split; loads h into models["robust"]."""
    from mix_perception.experiments import calibration

    specs["robust"] = from_options.robust_spec(args)
    models["robust"] = from_options.load_one(specs["robust"], args.robust_arch, args, run.device)
    from_options.check_models(models, calib, run.device)
    reference = calibration.robust_reference(models["robust"], calib, config, run)
    floor = _floor(args, reference["pgd_accuracy"])
    transforms = calibration.transform_grid(args.transform, args.robust_logit_scales, args.powers, args.offsets)
    candidates = [(a, t) for t in transforms for a in args.alphas]
    goal = calibration.AttackGoal(config, args.floor_attack, args.search)
    return calibration.calibrate_attack(
        models["standard"], models["robust"], calib, candidates, floor, goal, run, reference
    )


def _search_certified(args, models: dict, specs: dict, calib, config, settings, run):
    """Calibration of goal certified on the calibration split; loads h (Lipschitz or smoothing base)."""
    from mix_perception.core.transforms import Transform
    from mix_perception.experiments import calibration
    from mix_perception.experiments.batches import accuracy

    lipschitz = args.certification == "lipschitz"
    specs["robust"] = from_options.lipschitz_spec(args) if lipschitz else from_options.smoothing_spec(args)
    arch = args.lipschitz_arch if lipschitz else args.smoothing_arch
    models["robust"] = from_options.load_one(specs["robust"], arch, args, run.device)
    from_options.check_models(models, calib, run.device)
    outcome = _certified_outcome(args, models, calib, settings, run)
    floor = _floor(args, accuracy(outcome(1.0, Transform()).certified))
    transforms = calibration.transform_grid("logit_scale", args.robust_logit_scales) if lipschitz else [Transform()]
    return calibration.calibrate_certified(outcome, [(a, t) for t in transforms for a in args.alphas], floor)


def _test_attack(args, models: dict, chosen, test, config, settings, run) -> dict:
    """Test-split numbers of the chosen setting (clean, STD, ROB, MIX; AutoAttack with --test-autoattack)
    and of h alone (the targets' reference)."""
    from mix_perception.experiments import autoattack, calibration, sweeps
    from mix_perception.experiments.batches import accuracy

    standard, robust = models["standard"], models["robust"]
    plan = autoattack.AutoAttackPlan([chosen.alpha] if args.test_autoattack else [], "custom", ("apgd-ce", "apgd-t"))
    transformed = chosen.transform.apply(robust)
    sweep = sweeps.sweep_alphas(standard, transformed, test, [chosen.alpha], config, ("std", "rob", "mix"), plan, run)
    row = sweeps.sweep_summary(sweep)["per_alpha"][0]
    reference = calibration.robust_reference(robust, test, config, run)
    reference["standard_clean_accuracy"] = accuracy(sweep.standard.clean_correct)
    if args.test_autoattack:
        correct = autoattack.autoattack_correct(
            robust, test.x, test.y, config.norm, config.eps, plan.version, plan.attacks, run
        )
        reference["autoattack_accuracy"] = accuracy(correct)
    return {"images": int(len(test.y)), "mixture": row, "robust_alone": reference, "targets": _targets(row, reference)}


def _targets(row: dict, reference: dict) -> dict:
    """The project's targets (clean >= 0.90, MIX >= 0.9 x h's PGD accuracy) and the paper's claim, met or not."""
    ratio = row["attacks"]["mix"]["accuracy"] / reference["pgd_accuracy"] if reference["pgd_accuracy"] else None
    return {
        "clean_at_least_0.90": row["clean_accuracy"] >= 0.90,
        "mix_ratio_to_robust": ratio,
        "mix_at_least_0.9_of_robust": ratio is not None and ratio >= 0.9,
        "paper_clean_error_halved": (1 - row["clean_accuracy"]) <= (1 - reference["clean_accuracy"]) / 2,
        "paper_mix_at_least_0.8_of_robust": ratio is not None and ratio >= 0.8,
    }


def _test_certified(args, models: dict, chosen, test, config, settings, run) -> dict:
    """Test-split clean and certified accuracy at --radius of the chosen setting and of h alone."""
    from mix_perception.core.transforms import Transform
    from mix_perception.experiments.batches import accuracy

    outcome = _certified_outcome(args, models, test, settings, dataclasses.replace(run, seed=run.seed + 1))
    mixture, alone = outcome(chosen.alpha, chosen.transform), outcome(1.0, Transform())
    return {
        "images": int(len(test.y)),
        "mixture": {
            "alpha": chosen.alpha,
            "transform": chosen.transform.describe(),
            "clean_accuracy": accuracy(mixture.clean),
            "certified_accuracy": accuracy(mixture.certified),
        },
        "robust_alone": {"clean_accuracy": accuracy(alone.clean), "certified_accuracy": accuracy(alone.certified)},
    }


def _certified_outcome(args, models: dict, data, settings, run):
    """outcome(alpha, transform) -> certified_curves.Outcome on `data` at --radius: the Lipschitz h at the
    transform's logit scale, or the smoothed h (Theorem 5 or 4; one Monte Carlo pass serves every alpha)."""
    from mix_perception.core.errors import first_line
    from mix_perception.experiments import certified_curves
    from mix_perception.experiments.batches import log_probs

    standard_probs = log_probs(models["standard"].to(run.device).eval(), data.x, run).exp()
    robust, y, radius = models["robust"], data.y, args.radius
    if args.certification == "lipschitz":
        try:
            h = certified_curves.lipschitz_logits(robust, data.x, run)
        except ValueError as error:  # a layer whose constant cannot be bounded
            raise CommandError(f"--lipschitz-model: {first_line(error)}") from None
        return lambda a, t: certified_curves.lipschitz_outcome(standard_probs, h, y, a, t.scale, radius)
    bounds = certified_curves.smoothing_bounds(robust, data.x, settings, run)
    method = args.certification
    return lambda a, t: certified_curves.smoothing_outcome(standard_probs, bounds, y, a, method, radius)


def _write_node_file(args, result, models: dict, specs: dict, calib, yaml_path: Path, settings) -> dict:
    """Write the node's parameter file for the chosen setting; returns its parameters.

    Embedded models are named as "default:<name>"; a model file is named by its absolute path, or,
    when it needed command-line options to load (--mean/--std/--input-channels/--num-classes, which
    the node has no per-model parameters for), exported as a self-contained TorchScript file. A logit
    scale becomes robust_logit_scale; a MixedNUTS transform is exported with h as robust_sharpened.pt.
    """
    from mix_perception.experiments import parameter_file

    chosen, folder, transform = result.chosen, yaml_path.parent, result.chosen.transform
    needs_options = any(v is not None for v in (args.mean, args.std, args.input_channels, args.num_classes))

    def node_model(role: str, arch, name: str) -> tuple[str, str]:
        if specs[role].startswith("default:"):
            return specs[role], ""
        if needs_options:
            path = parameter_file.export_torchscript(models[role], calib.x[:1], folder / f"{name}.pt")
            return str(path.resolve()), ""
        return str(Path(specs[role]).resolve()), arch or ""

    comments = _comments(args, result, calib)
    certification, smoothing, extra = "none", None, {}
    if args.goal == "certified" and args.certification != "lipschitz":
        certification, smoothing = args.certification, settings
        robust = node_model("robust", args.smoothing_arch, "smoothing_base")
    elif transform.kind == "mixednuts":
        h = transform.apply(models["robust"])
        robust = str(parameter_file.export_torchscript(h, calib.x[:1], folder / "robust_sharpened.pt").resolve()), ""
        comments.append(f"robust_model is a TorchScript file of h with its logits transformed: {transform.describe()}.")
    else:
        lipschitz = args.goal == "certified"
        certification = "lipschitz" if lipschitz else "none"
        robust = node_model(
            "robust", *((args.lipschitz_arch, "lipschitz") if lipschitz else (args.robust_arch, "robust"))
        )
        if not transform.identity:
            extra["robust_logit_scale"] = float(transform.scale)
            comments.append(f"robust_logit_scale: the node multiplies h's logits by {transform.scale:g} before mixing.")
    if certification == "none":
        comments.append(
            "certification none: no certificate for an adversarially trained h (the safety monitor then flags "
            "every frame not_certified)."
        )
    standard = node_model("standard", args.standard_arch, "standard")
    params = parameter_file.node_parameters(
        chosen.alpha, standard[0], robust[0], certification, standard[1], robust[1], smoothing, extra
    )
    parameter_file.write_parameter_file(yaml_path, params, comments)
    return params


def _comments(args, result, calib) -> list[str]:
    """The parameter file's header: goal, floor, the chosen setting and its calibration numbers."""
    chosen = result.chosen
    return [
        "Written by `mix-perception calibrate`: mixer parameters for the chosen setting.",
        f"Goal: {result.goal}, floor {result.floor.value:.4f} (delta {result.floor.delta:g}) on {len(calib.y)} "
        f"images of {args.calibration_data}; chosen alpha {chosen.alpha:g}, h transform: "
        f"{chosen.transform.describe()}.",
        f"Calibration split: clean {chosen.clean_accuracy:.4f}, robust {chosen.robust_accuracy:.4f} "
        f"(lower bound {chosen.robust_lower:.4f}). Details: calibration.json next to this file.",
        "Use: mix-perception run --config <this file>   (parameters not listed keep their defaults)",
    ]


def _config(args, calib, test, specs: dict, config, settings) -> dict:
    lipschitz = args.goal == "certified" and args.certification == "lipschitz"
    return {
        "goal": args.goal,
        "standard": specs["standard"],
        "robust": specs["robust"],
        "min_robust": args.min_robust,
        "min_robust_ratio": args.min_robust_ratio,
        "floor_delta": args.floor_delta,
        "floor_attack": args.floor_attack if args.goal == "attack" else None,
        "search": args.search if args.goal == "attack" else None,
        "radius": args.radius if args.goal == "certified" else None,
        "alphas": list(args.alphas),
        "transform": "logit_scale" if lipschitz else (args.transform if args.goal == "attack" else None),
        "robust_logit_scales": list(args.robust_logit_scales),
        "powers": list(args.powers) if args.transform == "mixednuts" else None,
        "offsets": list(args.offsets) if args.transform == "mixednuts" else None,
        "calibration_data": args.calibration_data,
        "calibration_images": int(len(calib.y)),
        "test_data": None if test is None else args.test_data,
        "test_images": None if test is None else int(len(test.y)),
        "attack": {"norm": config.norm, "eps": config.eps, "steps": config.steps, "step_size": config.step_size},
        "certification": args.certification if args.goal == "certified" else None,
        "sigma": settings.sigma,
        "n_select": settings.n_select,
        "n_estimate": settings.n_estimate,
        "delta": settings.delta,
        "seed": args.seed,
        "device": args.device,
    }


def _print(report: dict) -> None:
    cal = report["calibration"]
    chosen = cal["chosen"]
    tried = sum(c["robust_accuracy"] is not None for c in cal["candidates"])
    print(
        f"goal {cal['goal']}: floor {cal['floor']:.4f} (delta {cal['floor_delta']:g}); tried {tried} of "
        f"{len(cal['candidates'])} candidates; chosen alpha {chosen['alpha']:g}, {chosen['transform']['description']}: "
        f"calibration clean {chosen['clean_accuracy']:.4f}, robust {chosen['robust_accuracy']:.4f} "
        f"(lower bound {chosen['robust_lower']:.4f})"
    )
    test = report.get("test")
    if test and "attacks" in test["mixture"]:
        m, r = test["mixture"], test["robust_alone"]
        attacks = ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in m["attacks"].items())
        print(f"test ({test['images']} images): mixture clean {m['clean_accuracy']:.4f}, {attacks}")
        if "autoattack_accuracy" in m:
            print(f"  AutoAttack (apgd-ce, apgd-t) on mixture {m['autoattack_accuracy']:.4f}")
        print(f"  h alone: clean {r['clean_accuracy']:.4f}, PGD {r['pgd_accuracy']:.4f}; targets {test['targets']}")
    elif test:
        print(f"test ({test['images']} images): {test['mixture']}; h alone {test['robust_alone']}")

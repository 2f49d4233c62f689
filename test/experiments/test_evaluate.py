"""`mix-perception evaluate` and its toolkit: a tiny run end to end (JSON schema, plots, invariants),
certified radii against the core's certify, certified curves, margins, the paper-claim check, bad input."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from mix_perception import cli
from mix_perception.core.architectures import build
from mix_perception.core.smoothing import SmoothedClassifier, SmoothingSettings
from mix_perception.experiments import autoattack, certified_curves, data, margins, sweeps
from mix_perception.experiments.batches import RunSettings

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """g: our CNN as a checkpoint dict; h: torchvision resnet18 (10 classes, 3-channel) as a bare state_dict."""
    import torchvision

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    standard = build("fmnist_cnn")
    torch.save(
        {"arch": "mix_perception:fmnist_cnn", "num_classes": 10, "state_dict": standard.state_dict(), "mean": [0.3]},
        folder / "standard.pt",
    )
    robust = torchvision.models.resnet18(num_classes=10)
    torch.save(robust.state_dict(), folder / "resnet18_state_dict.pth")
    return folder / "standard.pt", folder / "resnet18_state_dict.pth"


@pytest.fixture(scope="module")
def tiny_run(checkpoints, tmp_path_factory):
    standard, robust = checkpoints
    out = tmp_path_factory.mktemp("evaluate")
    torch.set_num_threads(2)
    argv = [
        "evaluate", "--standard", str(standard), "--robust", str(robust), "--robust-arch", "resnet18",
        "--input-channels", "1", "--data", "test", "--limit", "32", "--alphas", "0,0.6,1", "--steps", "2",
        "--certify", "both", "--smoothing-model", str(standard), "--n-select", "4", "--n-estimate", "16",
        "--match-sigmas", "0.1", "--max-radius", "0.5", "--radius-step", "0.05", "--batch-size", "16",
        "--device", "cpu", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    return json.loads((out / "results.json").read_text()), out


@pytest.mark.slow  # a whole evaluate run (module fixture)
def test_results_json_schema(tiny_run):
    results, out = tiny_run
    assert results["schema_version"] == 1
    assert results["config"]["images"] == 32 and results["config"]["alphas"] == [0.0, 0.6, 1.0]
    assert results["config"]["attack"] == {"norm": "linf", "eps": 0.1, "steps": 2, "step_size": None}
    for name in ("standard", "robust"):
        assert set(results["models"][name]) == {"clean_accuracy", "pgd_accuracy"}
    assert [row["alpha"] for row in results["per_alpha"]] == [0.0, 0.6, 1.0]
    for row in results["per_alpha"]:
        assert 0.0 <= row["clean_accuracy"] <= 1.0
        assert set(row["attacks"]) == {"std", "rob", "mix", "worst"}
        for value in row["attacks"].values():
            assert 0.0 <= value["accuracy"] <= 1.0
        assert "autoattack_accuracy" not in row
    for kind in ("clean", "attacked"):
        for group in ("correct", "incorrect", "all"):
            stats = results["margins"][kind][group]
            assert set(stats) == {"count", "mean", "median"}
        assert results["margins"][kind]["correct"]["count"] + results["margins"][kind]["incorrect"]["count"] == 32
    assert set(results["certified"]) == {"smoothing", "smoothing_theorem4"}
    for method, cert in results["certified"].items():
        assert cert["method"] == method and cert["images"] == 32 and cert["norm"] == "l2"
        assert [r["sigma"] for r in cert["robust_alone"]] == [0.25, 0.1]
        assert [m["alpha"] for m in cert["mixture"]] == [0.0, 0.6, 1.0]
        assert len(cert["radii"]) == 11 and cert["radii"][0] == 0.0
        for m in cert["mixture"]:
            assert set(m) == {"alpha", "clean_accuracy", "curve", "matched_robust"}
            assert len(m["curve"]) == 11
    # Same bounds, so the same clean accuracies; Theorem 5's radius is never below Theorem 4's.
    smoothing, theorem4 = results["certified"]["smoothing"], results["certified"]["smoothing_theorem4"]
    for s_row, l_row in zip(smoothing["mixture"], theorem4["mixture"], strict=True):
        assert s_row["clean_accuracy"] == l_row["clean_accuracy"]
        assert all(a >= b for a, b in zip(s_row["curve"], l_row["curve"], strict=True))
    assert results["claims"]["paper_linear_mixing"]["attack"] == "mix"
    names = ("accuracy_vs_alpha.png", "tradeoff.png", "certified_accuracy_smoothing.png")
    for name in (*names, "certified_accuracy_smoothing_theorem4.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow  # a whole evaluate run (module fixture)
def test_worst_is_at_most_every_attack_and_clean(tiny_run):
    for row in tiny_run[0]["per_alpha"]:
        worst = row["attacks"]["worst"]["accuracy"]
        assert worst <= row["clean_accuracy"]
        for name in ("std", "rob", "mix"):
            assert worst <= row["attacks"][name]["accuracy"]


@pytest.mark.slow  # a whole evaluate run (module fixture)
def test_alpha_zero_and_one_are_the_base_models(tiny_run):
    results = tiny_run[0]
    first, last = results["per_alpha"][0], results["per_alpha"][-1]
    assert first["clean_accuracy"] == results["models"]["standard"]["clean_accuracy"]
    assert first["attacks"]["std"]["accuracy"] == results["models"]["standard"]["pgd_accuracy"]
    assert last["clean_accuracy"] == results["models"]["robust"]["clean_accuracy"]
    assert last["attacks"]["rob"]["accuracy"] == results["models"]["robust"]["pgd_accuracy"]


@pytest.mark.slow  # a whole evaluate run (module fixture)
def test_certified_curves_non_increasing_and_zero_for_small_alpha(tiny_run):
    for cert in tiny_run[0]["certified"].values():
        curves = [m["curve"] for m in cert["mixture"]] + [r["curve"] for r in cert["robust_alone"]]
        for curve in curves:
            assert all(a >= b for a, b in zip(curve, curve[1:], strict=False))
            assert all(0.0 <= v <= 1.0 for v in curve)
        assert all(v == 0.0 for v in cert["mixture"][0]["curve"])  # alpha 0 <= 1/2: no certificate


def _noisy_linear(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).eval()


@pytest.mark.parametrize("method", ["smoothing", "smoothing_theorem4"])
@pytest.mark.parametrize("mode", ["votes", "probs"])
def test_radius_from_bounds_equals_certify(method, mode):
    base = _noisy_linear()
    with torch.no_grad():
        base[1].weight.mul_(8.0)
    x = torch.rand(6, 1, 4, 4)
    settings = SmoothingSettings(sigma=0.3, n_select=8, n_estimate=64, delta=0.01, mode=mode, batch_size=128)
    bounds = certified_curves.smoothing_bounds(base, x, settings, RunSettings(seed=5))
    smoothed = SmoothedClassifier(base, settings)
    for alpha in (0.4, 0.7, 0.95, 1.0):
        cert = smoothed.certify(x, alpha, generator=torch.Generator().manual_seed(5), method=method)
        assert torch.equal(bounds.prediction, cert.prediction)
        assert torch.allclose(certified_curves.certified_radius(bounds, alpha, method), cert.radius.double())


def test_certified_curve_counts_only_correct_certified_images():
    correct = torch.tensor([True, True, False, True, True])
    radius = torch.tensor([0.0, 0.3, 0.9, 0.1, 0.5], dtype=torch.float64)
    assert certified_curves.certified_curve(correct, radius, [0.0, 0.1, 0.3, 0.5, 0.6]) == [0.6, 0.6, 0.4, 0.2, 0.0]
    generator = torch.Generator().manual_seed(1)
    for _ in range(20):
        correct = torch.rand(50, generator=generator) > 0.3
        radius = torch.rand(50, generator=generator).double() * (torch.rand(50, generator=generator) > 0.2)
        curve = certified_curves.certified_curve(correct, radius, np.linspace(0, 1, 21))
        assert all(a >= b for a, b in zip(curve, curve[1:], strict=False))


def test_match_clean_accuracy_prefers_the_most_robust_sigma_that_reaches_the_target():
    candidates = [(0.25, 0.80), (0.2, 0.84), (0.15, 0.88), (0.1, 0.90)]
    assert certified_curves.match_clean_accuracy(0.85, candidates) == (0.15, 0.88)
    assert certified_curves.match_clean_accuracy(0.80, candidates) == (0.25, 0.80)
    assert certified_curves.match_clean_accuracy(0.95, candidates) == (0.1, 0.90)  # none reaches: most accurate


def test_margin_table_splits_by_correctness():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.5, 0.4], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    y = torch.tensor([0, 0, 0, 2])
    base = sweeps.BaseResult(probs.argmax(-1) == y, probs.argmax(-1) == y, probs, probs)
    table = margins.margin_table(base, y)
    assert table["clean"]["correct"]["count"] == 3 and table["clean"]["incorrect"]["count"] == 1
    assert table["clean"]["correct"]["mean"] == pytest.approx((0.5 + 0.3 + 0.4) / 3, abs=1e-6)
    assert table["clean"]["correct"]["median"] == pytest.approx(0.4, abs=1e-6)
    assert table["clean"]["incorrect"]["median"] == pytest.approx(0.1, abs=1e-6)


def test_paper_claim():
    summary = {
        "models": {"robust": {"clean_accuracy": 0.8, "pgd_accuracy": 0.7}},
        "per_alpha": [
            {"alpha": 0.5, "clean_accuracy": 0.92, "attacks": {"mix": {"accuracy": 0.5}}},
            {"alpha": 0.7, "clean_accuracy": 0.90, "attacks": {"mix": {"accuracy": 0.6}}},
            {"alpha": 0.9, "clean_accuracy": 0.85, "attacks": {"mix": {"accuracy": 0.7}}},
        ],
    }
    claim = sweeps.paper_claim(summary)
    assert claim["holds"] and [a["alpha"] for a in claim["alphas"]] == [0.7]
    summary["per_alpha"][1]["attacks"]["mix"]["accuracy"] = 0.55
    assert not sweeps.paper_claim(summary)["holds"]


def test_load_data_npz_layouts(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 6, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "hwc.npz", images=images, labels=np.arange(5))
    loaded = data.load_data(str(tmp_path / "hwc.npz"), limit=3)
    assert loaded.x.shape == (3, 3, 6, 7) and loaded.y.tolist() == [0, 1, 2]
    assert torch.allclose(loaded.x[1, 2], torch.from_numpy(images[1, :, :, 2]).float() / 255)
    np.savez(tmp_path / "bad.npz", x=np.full((2, 4, 4), 2.0), y=np.zeros(2, dtype=np.int64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.load_data(str(tmp_path / "bad.npz"))


def test_autoattack_on_mixture_is_at_most_clean():
    pytest.importorskip("pyautoattack")
    from mix_perception.core.mixing import MixedClassifier

    mixed = MixedClassifier(_noisy_linear(1), _noisy_linear(2), 0.6)
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 4, (8,))
    correct = autoattack.autoattack_correct(mixed, x, y, "linf", 0.05, version="custom", attacks=["apgd-ce", "apgd-t"])
    clean = mixed(x).argmax(-1) == y
    assert correct.shape == (8,) and not bool((correct & ~clean).any())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--data", "missing.npz"], "no such data file"),
        (["--standard", "missing.pt"], "no such file"),
        (["--robust-arch", "not_a_model"], "unknown architecture"),
        (["--delta", "2"], "--delta"),
    ],
)
def test_bad_input_is_one_line_error(checkpoints, tmp_path, capsys, extra, message):
    standard, robust = checkpoints
    argv = ["evaluate", "--standard", str(standard), "--robust", str(robust), "--robust-arch", "resnet18"]
    argv += ["--input-channels", "1", "--limit", "4", "--out", str(tmp_path), "--quiet", *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("mix-perception evaluate: error:")


def test_bad_alpha_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", "--alphas", "0.5,1.5"])
    assert exit_info.value.code == 2
    assert "alphas must lie in [0, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_calibrate_runs_on_user_checkpoints_with_a_torchvision_h(checkpoints, tmp_path):
    """calibrate with g a checkpoint dict and h a bare resnet18 state_dict (3-channel, fed 1-channel images):
    it writes a parameter file whose models (TorchScript exports: they needed --input-channels) load."""
    import yaml

    from mix_perception.core.models import load_model

    standard, robust = checkpoints
    argv = [
        "calibrate", "--standard", str(standard), "--robust", str(robust), "--robust-arch", "resnet18",
        "--input-channels", "1", "--limit", "16", "--test-limit", "16", "--alphas", "0.6,1",
        "--robust-logit-scales", "1",
        "--steps", "2", "--min-robust", "0", "--batch-size", "16", "--device", "cpu", "--out", str(tmp_path),
        "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads((tmp_path / "calibration.json").read_text())
    assert report["calibration"]["floor_delta"] == 0.05 and report["test"]["images"] == 16
    params = yaml.safe_load((tmp_path / "mixer_calibrated.yaml").read_text())["/**/mixer"]["ros__parameters"]
    assert params["alpha"] in (0.6, 1.0)
    for name in ("standard_model", "robust_model"):
        assert load_model(params[name])(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.slow  # a Lipschitz CNN's proven constant and an evaluate run
def test_deterministic_lipschitz_curves_of_a_lipschitz_h(checkpoints, tmp_path, capsys):
    """evaluate --certify lipschitz on a (random) Lipschitz CNN: the curve of h alone is what
    lipschitz_logit_radius gives on h's own float64 logits, the mixtures certify nothing at alpha <= 1/2,
    and a layer whose constant cannot be bounded (a resnet's batch norm) is refused with one line."""
    from mix_perception.core.certify import lipschitz_logit_radius
    from mix_perception.core.lipschitz import lipschitz_bound, margin_lipschitz
    from mix_perception.core.models import load_model

    standard, resnet = checkpoints
    torch.manual_seed(1)
    lipschitz = tmp_path / "lipschitz.pt"
    network = build("lipschitz_cnn")
    torch.save({"arch": "mix_perception:lipschitz_cnn", "state_dict": network.state_dict()}, lipschitz)
    out = tmp_path / "out"
    argv = [
        "evaluate", "--standard", str(standard), "--robust", str(standard), "--attacks", "none", "--limit", "24",
        "--alphas", "0.4,0.8", "--certify", "lipschitz", "--lipschitz-model", str(lipschitz),
        "--robust-logit-scales", "1,3",
        "--max-radius", "0.2", "--radius-step", "0.05", "--device", "cpu", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    cert = json.loads((out / "results.json").read_text())["certified"]["lipschitz"]
    assert [(m["alpha"], m["logit_scale"]) for m in cert["mixture"]] == [(0.4, 1.0), (0.8, 1.0), (0.4, 3.0), (0.8, 3.0)]
    assert all(v == 0.0 for m in cert["mixture"] if m["alpha"] <= 0.5 for v in m["curve"])
    model = load_model(lipschitz)
    x, y = data.load_data("test", 24)[:2]
    assert cert["lipschitz_constant"] == pytest.approx(lipschitz_bound(model, (1, 28, 28)))
    with torch.no_grad():
        z = model.double()(x.double())
    own = lipschitz_logit_radius(z, 1.0, cert["lipschitz_constant"], margin_lipschitz(model, (1, 28, 28)))
    right = z.argmax(-1) == y
    expected = [float((right & (own > 0) & (own >= r)).double().mean()) for r in cert["radii"]]
    assert cert["robust_alone"][0]["curve"] == pytest.approx(expected)
    assert (out / "certified_accuracy_lipschitz.png").read_bytes()[:8] == PNG_MAGIC

    refused = argv[:]
    refused[refused.index(str(lipschitz))] = str(resnet)
    refused[refused.index("--lipschitz-model") + 2 : refused.index("--lipschitz-model") + 2] = [
        "--lipschitz-arch", "resnet18", "--input-channels", "1",
    ]  # fmt: skip
    capsys.readouterr()
    assert cli.main(refused) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot bound the Lipschitz constant of layer type ResNet" in err and "\n" not in err


def test_evaluate_reads_input_and_classes_from_the_cards_and_names_a_mismatch(tmp_path, capsys):
    """An RGB pair saved with cards (g normalized by its card, h plain) evaluates on RGB data with no input
    options; data of another size, or with other class names, stops with one line naming the card."""
    from mix_perception.core import cards
    from mix_perception.core.architectures import GroupSort2

    torch.manual_seed(0)
    names = ["red", "green", "blue"]
    g = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    h = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), GroupSort2(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    cards.save_model(g, tmp_path / "g.pt", (3, 8, 8), names, mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    cards.save_model(h, tmp_path / "h.pt", (3, 8, 8), names)
    rng = np.random.default_rng(0)
    for name, size, classes in (("rgb", 8, names), ("big", 9, names), ("other", 8, ["a", "b", "c"])):
        images = rng.integers(0, 256, (6, size, size, 3), dtype=np.uint8)
        np.savez(tmp_path / f"{name}.npz", images=images, labels=np.arange(6) % 3, class_names=np.array(classes))
    argv = ["evaluate", "--standard", str(tmp_path / "g.pt"), "--robust", str(tmp_path / "h.pt"), "--attacks", "none",
            "--certify", "lipschitz", "--lipschitz-model", str(tmp_path / "h.pt"), "--alphas", "0.6,1",
            "--device", "cpu", "--quiet"]  # fmt: skip
    assert cli.main([*argv, "--data", str(tmp_path / "rgb.npz"), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["config"]["images"] == 6
    for name, message in (("big", r"g.json says input [3, 8, 8], the data"), ("other", "g.json names classes")):
        capsys.readouterr()
        assert cli.main([*argv, "--data", str(tmp_path / f"{name}.npz"), "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err

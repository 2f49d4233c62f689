"""Tests of mix_perception.core.models: safe checkpoint loading, TorchScript, normalization, devices."""

import os
import pickle
import warnings
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from mix_perception.core.models import (
    DEFAULT_MODELS,
    ModelLoadError,
    Normalized,
    RepeatChannels,
    default_model_path,
    load_default,
    load_model,
    resolve_device,
)

MEAN, STD = [0.3], [0.4]


@pytest.fixture(scope="module")
def resnet():
    """A randomly initialised torchvision resnet18 with 10 classes (3-channel input), eval mode."""
    torch.manual_seed(0)
    return torchvision.models.get_model("resnet18", weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def grey_batch():
    return torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def reference_logits(net: nn.Module, x: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """The network on the normalized input, computed by hand: grey repeated to `channels`, (x - mean) / std."""
    with torch.no_grad():
        return net((x.repeat(1, channels, 1, 1) - MEAN[0]) / STD[0])


def small_cnn(in_channels: int = 1, classes: int = 10) -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(16, classes),
    ).eval()


def save_torchscript(net: nn.Module, path, example: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in this torch, still supported
        torch.jit.save(torch.jit.trace(net, example), str(path))


def assert_load_error(path, *args, match: str | None = None, **kwargs) -> ModelLoadError:
    with pytest.raises(ModelLoadError) as info:
        load_model(path, *args, **kwargs)
    message = str(info.value)
    assert os.path.basename(str(path)) in message
    assert "\n" not in message
    if match is not None:
        assert match in message, message
    return info.value


# --- round trips -----------------------------------------------------------------------------------


def test_checkpoint_dict_round_trip(tmp_path, resnet, grey_batch):
    path = tmp_path / "resnet.pt"
    checkpoint = {
        "arch": "resnet18",
        "num_classes": 10,
        "state_dict": resnet.state_dict(),
        "mean": MEAN,
        "std": STD,
        "input_channels": 1,
        "input_shape": [1, 28, 28],
        "notes": "metadata is ignored",
    }
    torch.save(checkpoint, path)
    model = load_model(path)
    assert not model.training
    assert all(not m.training for m in model.modules())
    with torch.no_grad():
        logits = model(grey_batch)
    assert logits.shape == (3, 10)
    torch.testing.assert_close(logits, reference_logits(resnet, grey_batch), rtol=0, atol=1e-6)


def test_bare_state_dict_round_trip(tmp_path, resnet, grey_batch):
    path = tmp_path / "bare.pth"
    torch.save(resnet.state_dict(), path)
    model = load_model(path, arch="resnet18", num_classes=10, mean=MEAN, std=STD, input_channels=1)
    with torch.no_grad():
        torch.testing.assert_close(model(grey_batch), reference_logits(resnet, grey_batch), rtol=0, atol=1e-6)
    # num_classes inferred from the last linear layer when not given
    inferred = load_model(path, arch="resnet18", mean=MEAN, std=STD, input_channels=1)
    with torch.no_grad():
        assert inferred(grey_batch).shape == (3, 10)


def test_dataparallel_prefix_is_stripped(tmp_path, grey_batch):
    architectures = pytest.importorskip("mix_perception.core.architectures")
    path = tmp_path / "dp.pt"
    torch.manual_seed(3)
    ours = architectures.build("fmnist_cnn", num_classes=10).eval()
    torch.save({"arch": "mix_perception:fmnist_cnn", "num_classes": 10,
                "state_dict": OrderedDict((f"module.{k}", v) for k, v in ours.state_dict().items())}, path)
    model = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(model(grey_batch), ours(grey_batch), rtol=0, atol=1e-6)


def test_our_architecture_round_trip(tmp_path, grey_batch):
    architectures = pytest.importorskip("mix_perception.core.architectures")
    torch.manual_seed(4)
    net = architectures.build("fmnist_cnn", num_classes=10).eval()
    path = tmp_path / "ours.pt"
    torch.save({"arch": "mix_perception:fmnist_cnn", "num_classes": 10, "state_dict": net.state_dict(),
                "mean": MEAN, "std": STD, "input_channels": 1, "input_shape": [1, 28, 28]}, path)
    model = load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(model(grey_batch), reference_logits(net, grey_batch, channels=1), rtol=0, atol=1e-6)


def test_torchscript_round_trip(tmp_path, grey_batch):
    net = small_cnn(in_channels=1)
    path = tmp_path / "scripted.pt"
    save_torchscript(net, path, grey_batch)
    model = load_model(path, mean=MEAN, std=STD, num_classes=10, input_shape=(1, 28, 28))
    assert not model.training
    with torch.no_grad():
        torch.testing.assert_close(model(grey_batch), reference_logits(net, grey_batch, channels=1), rtol=0, atol=1e-6)


def test_torchscript_rgb_model_on_grey_data(tmp_path, grey_batch):
    net = small_cnn(in_channels=3)
    path = tmp_path / "scripted_rgb.pt"
    save_torchscript(net, path, grey_batch.repeat(1, 3, 1, 1))
    model = load_model(path, mean=MEAN, std=STD, input_channels=1)
    with torch.no_grad():
        torch.testing.assert_close(model(grey_batch), reference_logits(net, grey_batch), rtol=0, atol=1e-6)


# --- failures --------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    assert_load_error(tmp_path / "nowhere.pt", arch="resnet18", match="no such file")


def test_directory(tmp_path):
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    assert_load_error(folder, arch="resnet18", match="not a regular file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    assert_load_error(path, arch="resnet18", match="empty")


def test_random_bytes(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(os.urandom(4096))
    assert_load_error(path, arch="resnet18")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_checkpoint(tmp_path, keep):
    full = tmp_path / "full.pt"
    torch.save({"arch": "mix_perception:x", "num_classes": 10, "state_dict": small_cnn().state_dict()}, full)
    data = full.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    assert_load_error(path)


def test_truncated_torchscript(tmp_path, grey_batch):
    full = tmp_path / "full_ts.pt"
    save_torchscript(small_cnn(), full, grey_batch)
    data = full.read_bytes()
    path = tmp_path / "truncated_ts.pt"
    path.write_bytes(data[: len(data) // 2])
    assert_load_error(path)


def test_mismatched_num_classes(tmp_path, resnet):
    path = tmp_path / "mismatch.pt"
    torch.save({"arch": "resnet18", "num_classes": 5, "state_dict": resnet.state_dict()}, path)
    assert_load_error(path, match="fc.weight")


def test_state_dict_of_another_architecture(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(small_cnn().state_dict(), path)
    assert_load_error(path, arch="resnet18", num_classes=10, match="missing keys")


def test_unknown_architecture(tmp_path):
    path = tmp_path / "unknown_arch.pt"
    torch.save({"arch": "no_such_net", "num_classes": 10, "state_dict": small_cnn().state_dict()}, path)
    assert_load_error(path, match="unknown architecture")
    torch.save({"arch": "mix_perception:no_such_net", "num_classes": 10, "state_dict": small_cnn().state_dict()}, path)
    assert_load_error(path, match="no_such_net")


def test_bare_state_dict_without_arch(tmp_path):
    path = tmp_path / "no_arch.pt"
    torch.save(small_cnn().state_dict(), path)
    assert_load_error(path, match="arch=")


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    assert_load_error(path, arch="resnet18", match="expected a checkpoint dict")
    torch.save({"weights": [1, 2, 3]}, path)
    assert_load_error(path, arch="resnet18", match="not a state_dict")


def test_bad_normalization_in_checkpoint(tmp_path):
    path = tmp_path / "bad_std.pt"
    torch.save({"arch": "resnet18", "num_classes": 10, "std": [0.0],
                "state_dict": torchvision.models.get_model("resnet18", num_classes=10).state_dict()}, path)
    assert_load_error(path, match="std")


def test_wrong_output_shape(tmp_path, grey_batch):
    path = tmp_path / "wrong_output.pt"
    save_torchscript(small_cnn(classes=10), path, grey_batch)
    assert_load_error(path, num_classes=7, input_shape=(1, 28, 28), match="expected 7")
    conv_only = nn.Sequential(nn.Conv2d(1, 2, 3)).eval()
    save_torchscript(conv_only, path, grey_batch)
    assert_load_error(path, input_shape=(1, 28, 28), match="expected logits")
    save_torchscript(small_cnn(), path, grey_batch)
    assert_load_error(path, input_shape=(3, 28, 28), match="forward")


class CreatesMarker:
    """Unpickling this calls os.system / builtins.exec: the classic malicious checkpoint payload."""

    def __init__(self, marker, via_exec=False):
        self.marker, self.via_exec = str(marker), via_exec

    def __reduce__(self):
        if self.via_exec:
            return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("via_exec", [False, True])
@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_not_executed(tmp_path, via_exec, writer):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = {"arch": "resnet18", "num_classes": 10, "state_dict": {"x": CreatesMarker(marker, via_exec)}}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    assert not marker.exists()
    assert_load_error(path, match="weights_only")
    assert not marker.exists()


def test_pickled_whole_module_is_refused(tmp_path):
    path = tmp_path / "whole_module.pt"
    torch.save(small_cnn(), path)
    assert_load_error(path, match="weights_only")


# --- Normalized and the channel adapter ------------------------------------------------------------


def test_normalized_math():
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    model = Normalized(nn.Identity(), mean, std)
    x = torch.rand(2, 3, 4, 4)
    expected = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(Normalized(nn.Identity())(x), x)  # default: identity
    torch.testing.assert_close(Normalized(nn.Identity(), 0.5, 0.5)(x), (x - 0.5) / 0.5)  # scalars broadcast
    assert model.double()(x.double()).dtype == torch.float64


@pytest.mark.parametrize("std", [[0.0], [-1.0], [float("nan")], []])
def test_normalized_rejects_bad_std(std):
    with pytest.raises(ValueError, match="std"):
        Normalized(nn.Identity(), [0.0], std)


def test_repeat_channels():
    adapter = RepeatChannels(3)
    grey = torch.rand(2, 1, 5, 5)
    assert torch.equal(adapter(grey), grey.repeat(1, 3, 1, 1))
    rgb = torch.rand(2, 3, 5, 5)
    assert adapter(rgb) is rgb
    with pytest.raises(ValueError, match="channels"):
        adapter(torch.rand(2, 2, 5, 5))


# --- devices ---------------------------------------------------------------------------------------


def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="invalid device"):
        resolve_device("cuda:x")


def test_resolve_device_missing_cuda():
    with pytest.raises(ValueError, match="cuda:99"):
        resolve_device("cuda:99")
    if torch.cuda.is_available():
        assert resolve_device("cuda") == torch.device("cuda")
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_load_model_rejects_an_absent_device(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(small_cnn().state_dict(), path)
    with pytest.raises(ValueError, match="cuda:99"):
        load_model(path, arch="resnet18", device="cuda:99")


# --- default models --------------------------------------------------------------------------------


def test_unknown_default_name():
    with pytest.raises(ModelLoadError, match="standard, robust, smoothing"):
        load_default("nonexistent")
    with pytest.raises(ModelLoadError, match="nonexistent"):
        load_model("default:nonexistent")


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_default_models_load_or_fail_clearly(name, grey_batch):
    path = default_model_path(name)
    assert path.name == f"{name}.pt" and path.parent.name == "default_models"
    if not path.is_file():
        with pytest.raises(ModelLoadError, match=f"{name}.pt"):
            load_default(name)
        return
    for model in (load_default(name), load_model(f"default:{name}")):
        assert not model.training
        with torch.no_grad():
            logits = model(grey_batch)
        assert logits.shape == (3, 10) and torch.isfinite(logits).all()


def test_for_inference_keeps_the_function_and_puts_convolutions_channels_last():
    from mix_perception.core.models import for_inference, load_default

    model = load_default("smoothing")
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        prepared = for_inference(model, "cpu")
        torch.testing.assert_close(prepared(x), expected, rtol=1e-4, atol=1e-5)
    weights = [m.weight for m in prepared.modules() if isinstance(m, torch.nn.Conv2d)]
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    assert not prepared.training
    linear = for_inference(torch.nn.Linear(3, 2), "cpu")  # nothing to change without convolutions
    assert linear.weight.is_contiguous()

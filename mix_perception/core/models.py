"""Loading and wrapping classifiers: checkpoints (safely), TorchScript files, normalization, device.

Every model returned here takes pixels in [0, 1] of shape (N, C, H, W) and returns logits (N, K).

Checkpoint dict format (what `torch.save` should write; `mix-perception train-default` writes it):

    {
        "arch": "resnet18" | "mix_perception:<name>",  # torchvision classification model, or ours
        "num_classes": 10,
        "state_dict": <the bare network's state_dict (not the Normalized wrapper's)>,
        "mean": [0.286], "std": [0.353],      # optional: per-channel normalization, applied to [0, 1] input
        "input_channels": 1,                  # optional: channels of the data (1 = grey)
        "input_shape": [1, 28, 28],           # optional: (C, H, W) for a test forward at load time
        "arch_options": {"channels": 3, ...}, # optional: keyword arguments of our architecture's builder
        ...                                   # other keys (metadata) are ignored
    }

Files are read with `torch.load(weights_only=True)`: a pickle that would construct arbitrary Python
objects (and so could run code) is refused, never executed.
"""

import os
import warnings
import zipfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from mix_perception.core.errors import first_line

DEFAULT_MODELS = ("standard", "robust", "smoothing", "lipschitz")
DEFAULT_PREFIX = "default:"
OUR_ARCH_PREFIX = "mix_perception:"
# Class names of the embedded models (Fashion-MNIST), index = class id.


class ModelLoadError(Exception):
    """A model file could not be loaded. The message is one line: "<file>: <problem>"."""


def _fail(path, problem: str) -> ModelLoadError:
    """A ModelLoadError with the one-line message "<path>: <problem>" (newlines folded, long text cut)."""
    text = " ".join(f"{path}: {problem}".split())
    return ModelLoadError(text if len(text) <= 600 else text[:597] + "...")


class Normalized(nn.Module):
    """model((x - mean) / std) for pixels x in [0, 1] of shape (N, C, H, W).

    mean and std are per-channel sequences (length 1 or C) or scalars; None means 0 and 1 (identity).
    They are stored as buffers of shape (1, C, 1, 1), so they follow the module to any device/dtype.
    """

    def __init__(self, model: nn.Module, mean=None, std=None):
        super().__init__()
        mean = torch.as_tensor(0.0 if mean is None else mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(1.0 if std is None else std, dtype=torch.float32).flatten()
        if mean.numel() == 0 or not torch.isfinite(mean).all():
            raise ValueError(f"mean must be a non-empty sequence of finite numbers, got {mean.tolist()}")
        if std.numel() == 0 or not (torch.isfinite(std).all() and (std > 0).all()):
            raise ValueError(f"std must be a non-empty sequence of finite numbers > 0, got {std.tolist()}")
        self.model = model
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


class RepeatChannels(nn.Module):
    """Input adapter: grey images (N, 1, H, W) repeated to (N, channels, H, W), e.g. grey -> RGB.

    Inputs that already have `channels` channels pass unchanged; other channel counts raise ValueError.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = int(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.channels:
            return x
        if x.shape[1] != 1:
            raise ValueError(f"expected 1 or {self.channels} input channels, got {x.shape[1]}")
        return x.expand(-1, self.channels, -1, -1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def resolve_device(spec="auto") -> torch.device:
    """torch.device for "auto" (cuda if available, else cpu), "cpu", "cuda" or "cuda:N" (or a torch.device).

    Raises ValueError when CUDA is asked for but not available, when N is not a visible device index,
    or when the spec is none of these.
    """
    text = str(spec).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index = text[len("cuda:") :] if text.startswith("cuda:") else "0"
        if not index.isdigit():
            raise ValueError(f"invalid device {spec!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available here (use 'cpu' or 'auto')")
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise ValueError(f"device {spec!r} requested but only {count} CUDA device(s) are visible")
        return torch.device(text if ":" in text else "cuda")
    raise ValueError(f"invalid device {spec!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")


def _is_torchscript_archive(path: Path) -> bool:
    """True for a TorchScript zip archive (it holds code/ and constants.pkl; torch.save zips hold neither)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def _weights_only_problem(error: Exception) -> str:
    """One-line reason out of torch's multi-line 'Weights only load failed' message."""
    for line in str(error).splitlines():
        if "unsupported" in line.lower() or "GLOBAL" in line:
            return f"refused by torch.load(weights_only=True), not a plain weights file ({line.strip()})"
    return "refused by torch.load(weights_only=True), not a plain weights file"


def _torch_load(path: Path):
    """torch.load(path, weights_only=True) onto the CPU; every failure becomes a ModelLoadError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        if "Weights only load failed" in str(error):
            raise _fail(path, _weights_only_problem(error)) from None
        raise _fail(path, f"not a readable PyTorch checkpoint (corrupt or truncated?): {first_line(error)}") from None


def _check_file(path: Path) -> None:
    if not path.exists():
        raise _fail(path, "no such file")
    if not path.is_file():
        raise _fail(path, "not a regular file (a directory?)")
    if path.stat().st_size == 0:
        raise _fail(path, "file is empty")


def _build_architecture(path: Path, arch: str, num_classes: int, options=None) -> nn.Module:
    """An untrained network: torchvision classification model `arch`, or ours for "mix_perception:<name>"
    built with the keyword arguments `options` (the checkpoint's "arch_options")."""
    if arch.startswith(OUR_ARCH_PREFIX):
        name = arch[len(OUR_ARCH_PREFIX) :]
        try:
            from mix_perception.core import architectures
        except ImportError as error:
            raise _fail(path, f"architecture {arch!r} needs mix_perception.core.architectures ({error})") from None
        try:
            return architectures.build(name, num_classes=num_classes, **dict(options or {}))
        except Exception as error:
            raise _fail(path, f"cannot build architecture {arch!r}: {error}") from None
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        raise _fail(
            path,
            f"unknown architecture {arch!r}: expected a torchvision classification model name "
            f"(e.g. resnet18, mobilenet_v3_small) or '{OUR_ARCH_PREFIX}<name>'",
        )
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except Exception as error:
        raise _fail(path, f"cannot build torchvision architecture {arch!r}: {error}") from None


def _infer_num_classes(state_dict: Mapping) -> int | None:
    """Rows of the last 2-D '.weight' tensor (the final linear layer in torchvision models), or None."""
    matrices = [v for k, v in state_dict.items() if k.endswith("weight") and v.dim() == 2]
    return int(matrices[-1].shape[0]) if matrices else None


def _load_weights(path: Path, model: nn.Module, state_dict: Mapping, arch: str) -> None:
    """Copy state_dict into model; a mismatch of keys or shapes raises one ModelLoadError listing it."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:2])})")
    if problems:
        raise _fail(path, f"state_dict does not match architecture {arch!r}: {', '.join(problems)}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except Exception as error:
        raise _fail(path, f"cannot load state_dict into {arch!r}: {error}") from None


def _first_conv_channels(model: nn.Module) -> int | None:
    """Input channels the model expects: dim 1 of its first 4-D parameter (the first conv), or None."""
    for parameter in model.parameters():
        if parameter.dim() == 4:
            return int(parameter.shape[1])
    return None


def _wrap(path: Path, net: nn.Module, mean, std, input_channels) -> nn.Module:
    """Normalized(net, mean, std), preceded by RepeatChannels when grey data meets a multi-channel model."""
    try:
        wrapped = Normalized(net, mean, std)
    except (ValueError, TypeError, RuntimeError) as error:
        raise _fail(path, f"bad normalization mean={mean!r} std={std!r}: {error}") from None
    if input_channels is not None and (isinstance(input_channels, bool) or not isinstance(input_channels, int)):
        raise _fail(path, f"input_channels must be an int, got {input_channels!r}")
    model_channels = _first_conv_channels(net)
    if input_channels is None or model_channels is None or input_channels == model_channels:
        return wrapped
    if input_channels != 1:
        raise _fail(path, f"data has {input_channels} channels but the model expects {model_channels}")
    return nn.Sequential(RepeatChannels(model_channels), wrapped)


def _check_output(path: Path, model: nn.Module, input_shape, num_classes, device) -> None:
    """One forward of a grey (0.5) input of shape (1, *input_shape); the output must be (1, num_classes)."""
    shape = (1, *(int(s) for s in input_shape))
    try:
        with torch.no_grad():
            out = model(torch.full(shape, 0.5, device=device))
    except Exception as error:
        raise _fail(path, f"forward on an input of shape {shape} failed: {error}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise _fail(path, f"model output for input {shape} is {got}, expected logits of shape (1, num_classes)")
    if num_classes is not None and out.shape[1] != int(num_classes):
        raise _fail(path, f"model outputs {out.shape[1]} classes, expected {num_classes}")


def _load_torchscript(path: Path, device: torch.device) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated but still supported
            return torch.jit.load(str(path), map_location=device)
    except Exception as error:
        raise _fail(path, f"cannot load TorchScript archive: {first_line(error)}") from None


def _num_classes(path: Path, num_classes, state_dict: Mapping) -> int:
    """num_classes as given, else inferred from the state_dict's last linear layer; ModelLoadError unless
    it is a positive int."""
    if num_classes is None:
        num_classes = _infer_num_classes(state_dict)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise _fail(path, f"num_classes must be a positive int, got {num_classes!r}")
    return num_classes


def _read_checkpoint(path: Path) -> tuple[Mapping, dict]:
    """(metadata, state_dict) of a checkpoint dict, or ({}, the file's content) for a bare state_dict; a
    DataParallel "module." prefix stripped. ModelLoadError unless the state_dict maps names to tensors."""
    content = _torch_load(path)
    if not isinstance(content, Mapping):
        raise _fail(path, f"contains a {type(content).__name__}, expected a checkpoint dict or a state_dict")
    if "state_dict" in content:
        meta, state_dict = content, content["state_dict"]
    else:
        meta, state_dict = {}, content
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise _fail(path, "the state_dict is empty or not a dict")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise _fail(path, "not a state_dict (expected names mapped to tensors) nor a dict with a 'state_dict' key")
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return meta, state_dict


def load_model(
    path,
    arch: str | None = None,
    num_classes: int | None = None,
    mean=None,
    std=None,
    device="cpu",
    input_channels: int | None = None,
    input_shape=None,
) -> nn.Module:
    """Load a classifier as an nn.Module in eval mode on `device`, taking [0, 1] pixels (N, C, H, W) -> logits.

    `path` is one of:
      - a checkpoint dict saved with torch.save (format in this module's docstring);
      - a bare state_dict saved with torch.save (needs `arch`; num_classes is inferred from the last
        linear layer when not given; a DataParallel "module." prefix is stripped);
      - a TorchScript archive (torch.jit.save): loaded as is, wrapped with the given mean/std
        (a TorchScript model runs its own code when called: load only archives you trust);
      - "default:<name>": the embedded model `load_default(name, device)` (other arguments ignored).

    Arguments given here override the checkpoint's own "arch", "num_classes", "mean", "std",
    "input_channels", "input_shape". arch: a torchvision classification model name (resnet18, ...)
    or "mix_perception:<name>" (mix_perception.core.architectures.build). mean/std: per-channel
    normalization applied to the [0, 1] input (default: none). input_channels: channels of the data;
    1 with a 3-channel model inserts RepeatChannels (grey -> RGB). input_shape (C, H, W): when given,
    one test forward checks the output is (1, num_classes). device: as resolve_device ("auto", ...).

    Raises ModelLoadError("<file>: <problem>") for every problem with the file or its contents,
    ValueError for an invalid device.
    """
    if isinstance(path, str) and path.startswith(DEFAULT_PREFIX):
        return load_default(path[len(DEFAULT_PREFIX) :], device=device)
    device = resolve_device(device)
    path = Path(os.fspath(path))
    _check_file(path)

    if _is_torchscript_archive(path):
        net = _load_torchscript(path, device)
        model = _wrap(path, net, mean, std, input_channels).to(device).eval()
        if input_shape is not None:
            _check_output(path, model, input_shape, num_classes, device)
        return model

    meta, state_dict = _read_checkpoint(path)
    arch = arch if arch is not None else meta.get("arch")
    if not isinstance(arch, str) or not arch:
        raise _fail(path, "the architecture is unknown: pass arch= (e.g. 'resnet18' or 'mix_perception:<name>')")
    num_classes = _num_classes(path, num_classes if num_classes is not None else meta.get("num_classes"), state_dict)
    mean = mean if mean is not None else meta.get("mean")
    std = std if std is not None else meta.get("std")
    input_channels = input_channels if input_channels is not None else meta.get("input_channels")
    input_shape = input_shape if input_shape is not None else meta.get("input_shape")

    net = _build_architecture(path, arch, num_classes, meta.get("arch_options"))
    _load_weights(path, net, state_dict, arch)
    model = _wrap(path, net, mean, std, input_channels).to(device).eval()
    if input_shape is not None:
        _check_output(path, model, input_shape, num_classes, device)
    return model


def for_inference(model: nn.Module, device) -> nn.Module:
    """`model` on `device` in eval mode, its 4-D weights in channels_last memory format when it has 2-D
    convolutions (the same function: only the layout of the weights changes), with any input layout:
    convolutions and max pooling run faster that way on the CPU (docs/results/README.md, Benchmarks)."""
    model = model.to(device).eval()
    if any(isinstance(module, nn.Conv2d) for module in model.modules()):
        model = model.to(memory_format=torch.channels_last)
    return model


def default_spec(spec: str, name: str) -> str:
    """A model spec with the bare word "default" read as "default:<name>": the embedded model made for
    the role that asks (g: standard; h for attacks: robust; the base of a smoothed h: smoothing)."""
    return f"{DEFAULT_PREFIX}{name}" if spec == "default" else spec


def default_model_path(name: str) -> Path:
    """Where the embedded model `name` lives: mix_perception/default_models/<name>.pt (installed or not)."""
    return Path(str(resources.files("mix_perception").joinpath("default_models", f"{name}.pt")))


def load_default(name: str, device="cpu") -> nn.Module:
    """The embedded model `name` ("standard", "robust", "smoothing" or "lipschitz") on `device`, on [0, 1] pixels.

    Raises ModelLoadError for an unknown name (listing the valid ones) or a missing/bad file.
    """
    if name not in DEFAULT_MODELS:
        raise ModelLoadError(f"{DEFAULT_PREFIX}{name}: unknown default model; valid names: {', '.join(DEFAULT_MODELS)}")
    path = default_model_path(name)
    if not path.is_file():
        raise _fail(path, f"default model {name!r} is not there (rebuild with `mix-perception train-default`)")
    return load_model(path, device=device)

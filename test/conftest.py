"""Make every test import the INSTALLED mix_perception, never the source folder next to test/.

The package is built by CMake (`make build`): the installed copy in the venv carries the
generated `mix_perception.msg`; the source folder ./mix_perception does not. `python -m pytest`
puts the current folder first on sys.path, where ./mix_perception would shadow the installed
package, so the repository root is removed from sys.path here, before any test module is
imported. (pyproject.toml sets `--import-mode=importlib`, so pytest itself adds no test folder;
`make test` also runs `python -P`, which never adds the current folder.)
"""

import importlib.util
import os
import pathlib
import sys

import pytest
import torch
from torch import nn

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE_PACKAGE = REPO_ROOT / "mix_perception"


def _is_repo_root(entry: str) -> bool:
    """True for a sys.path entry that names the repository root ('' is the current folder)."""
    try:
        return pathlib.Path(entry or os.getcwd()).resolve() == REPO_ROOT
    except OSError:
        return False


sys.path[:] = [entry for entry in sys.path if not _is_repo_root(entry)]
for name in [name for name in sys.modules if name == "mix_perception" or name.startswith("mix_perception.")]:
    module_file = getattr(sys.modules[name], "__file__", None) or ""
    if module_file.startswith(str(SOURCE_PACKAGE)):
        del sys.modules[name]


def installed_package_dir() -> pathlib.Path:
    """Folder of the mix_perception that tests import; a usage error when it is not installed."""
    spec = importlib.util.find_spec("mix_perception")
    if spec is None or not spec.submodule_search_locations:
        raise pytest.UsageError(
            "mix_perception is not installed in this interpreter: run `make build` "
            "(or `pip install .` for the core library only)"
        )
    return pathlib.Path(next(iter(spec.submodule_search_locations))).resolve()


def _stale_files(package_dir: pathlib.Path) -> list[str]:
    """Source .py files whose installed copy is missing or different (edited since `make build`)."""
    stale = []
    for source in sorted(SOURCE_PACKAGE.rglob("*.py")):
        relative = source.relative_to(SOURCE_PACKAGE)
        copy = package_dir / relative
        if "__pycache__" not in relative.parts and (not copy.is_file() or copy.read_bytes() != source.read_bytes()):
            stale.append(str(relative))
    return stale


def pytest_report_header(config):
    """Say which mix_perception is under test, and warn when it is older than the source."""
    package_dir = installed_package_dir()
    if package_dir == SOURCE_PACKAGE:
        return f"mix_perception: {package_dir} (SOURCE TREE: editable install?)"
    lines = [f"mix_perception: {package_dir} (installed)"]
    stale = _stale_files(package_dir)
    if stale:
        lines.append(f"WARNING: installed mix_perception is older than the source, run `make build`: {stale}")
    return lines


class ConstantLogits(nn.Module):
    """The same logits (C,) for every input: (N, ...) -> (N, C). Zero gradient in x (attacks can run on it);
    scriptable with torch.jit.script."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1) + 0.0 * x.flatten(1).sum(1, keepdim=True)


class Affine(nn.Module):
    """logits = x.flatten(1) @ weight, weight (D, C) a parameter."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight


@pytest.fixture(scope="session")
def installed_package() -> pathlib.Path:
    """Folder of the installed mix_perception under test."""
    return installed_package_dir()


@pytest.fixture(scope="session")
def stale_files():
    """stale_files(package_dir) -> source .py files whose copy in package_dir is missing or different."""
    return _stale_files


@pytest.fixture(scope="session")
def constant_logits():
    """The ConstantLogits class: `constant_logits([0.0, 3.0, 2.0])` is a model with those logits everywhere."""
    return ConstantLogits


@pytest.fixture(scope="session")
def affine():
    """The Affine class: `affine(weight)` is the linear model x -> x.flatten(1) @ weight."""
    return Affine

"""The mixer and the safety monitor load the node's runtime only: constructing them (with the embedded
models, also with robust_logit_scale != 1) imports none of the offline toolkit, tqdm, matplotlib, deel-torchlip or
AutoAttack. Checked in a fresh interpreter, against what `import torch, rclpy` alone loads (torch
itself imports tqdm, through torch.hub: that is torch's, not ours)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a new interpreter per test

FORBIDDEN = ("mix_perception.experiments", "mix_perception.commands", "tqdm", "matplotlib", "pyautoattack", "deel")

SCRIPT = """
import json, sys
import rclpy, torch
from rclpy.parameter import Parameter

baseline = set(sys.modules)
from mix_perception.ros.mixer_node import MixerNode
from mix_perception.ros.safety_monitor import SafetyMonitorNode

overrides, extra_import, forbidden = json.loads(sys.argv[1])
if extra_import:
    __import__(extra_import)
rclpy.init()
nodes = [MixerNode(parameter_overrides=[Parameter(k, value=v) for k, v in overrides]), SafetyMonitorNode()]
new = set(sys.modules) - baseline
loaded = sorted(m for m in new if any(m == f or m.startswith(f + ".") for f in forbidden))
for node in nodes:
    node.destroy_node()
rclpy.shutdown()
print(json.dumps(loaded))
"""


def loaded_modules(overrides: list, extra_import: str = "") -> list[str]:
    """The FORBIDDEN modules that importing and constructing both nodes loads, beyond `import torch, rclpy`."""
    argument = json.dumps([overrides, extra_import, FORBIDDEN])
    result = subprocess.run(
        [sys.executable, "-P", "-c", SCRIPT, argument], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "overrides",
    [
        [["device", "cpu"]],
        [["device", "cpu"], ["certification", "none"], ["robust_model", "default:robust"], ["robust_logit_scale", 2.0]],
    ],
    ids=["default", "sharpened"],
)
def test_constructing_the_nodes_loads_none_of_the_toolkit(overrides):
    assert loaded_modules(overrides) == []


def test_the_check_sees_a_toolkit_import():
    sweeps = "mix_perception.experiments.sweeps"
    assert sweeps in loaded_modules([["device", "cpu"]], sweeps)

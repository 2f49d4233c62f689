"""config/mixer.yaml lists every parameter of every node with the default the node declares."""

import ast
import pathlib
import subprocess
import sys

import pytest
import yaml

from mix_perception.ros import parameters
from mix_perception.ros.demo_camera import EXTRA as DEMO_EXTRA
from mix_perception.ros.launch_arguments import launch_overrides

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "config" / "mixer.yaml"
LAUNCH_FILE = CONFIG.parents[1] / "launch" / "mixer.launch.py"
TABLES = {
    "mixer": parameters.MIXER,
    "safety_monitor": parameters.SAFETY_MONITOR,
    "demo_camera": parameters.DEMO_CAMERA + DEMO_EXTRA,
}


# The shipped verdict: what `calibrate --goal risk` wrote for the shipped pipeline, in place of the nodes'
# "off" defaults; the mixer names the embedded copy of the OOD model it wrote.
CALIBRATION = pathlib.Path(__file__).resolve().parents[2] / "docs" / "results" / "safety" / "mixer_risk.yaml"
VERDICT = tuple(name for name in parameters.defaults(parameters.SAFETY_MONITOR) if "." in name)
CALIBRATED = {"mixer": ("ood_model",), "safety_monitor": VERDICT}


@pytest.mark.parametrize("node", sorted(TABLES))
def test_yaml_lists_every_parameter_with_its_default_or_the_shipped_calibration(node):
    config = yaml.safe_load(CONFIG.read_text())
    assert set(config) == {f"/**/{name}" for name in TABLES}
    listed = parameters.flatten(config[f"/**/{node}"]["ros__parameters"])
    calibrated = CALIBRATED.get(node, ())
    assert listed.keys() == parameters.defaults(TABLES[node]).keys()
    assert {k: v for k, v in listed.items() if k not in calibrated} == {
        k: v for k, v in parameters.defaults(TABLES[node]).items() if k not in calibrated
    }
    if not calibrated:
        return
    written = parameters.flatten(yaml.safe_load(CALIBRATION.read_text())[f"/**/{node}"]["ros__parameters"])
    written |= {"ood_model": "default:ood_lipschitz"} if node == "mixer" else {}
    assert {name: listed[name] for name in calibrated} == {name: written[name] for name in calibrated}


def test_the_shipped_acceptance_rule_names_the_pipeline_the_file_configures():
    """The calibrated threshold applies to the frames of the pipeline it was calibrated on: the fingerprint in
    the monitor's section is the one the mixer of this file publishes (recomputed from its models)."""
    from mix_perception.ros.mixer_runtime import build_runtime

    config = yaml.safe_load(CONFIG.read_text())
    mixer = parameters.defaults(parameters.MIXER) | parameters.flatten(config["/**/mixer"]["ros__parameters"])
    monitor = parameters.flatten(config["/**/safety_monitor"]["ros__parameters"])
    runtime = build_runtime(mixer | {"device": "cpu"})
    assert monitor["acceptance.pipeline"] == runtime.classifier.fingerprint.for_alpha(mixer["alpha"])
    assert monitor["acceptance.radius"] == monitor["required_radius"]


@pytest.mark.parametrize("node", sorted(TABLES))
def test_every_parameter_has_a_description_and_sane_default(node):
    for spec in TABLES[node]:
        assert spec.description
        if spec.choices:
            assert spec.default in spec.choices
        if spec.bounds:
            assert spec.bounds[0] <= spec.default <= spec.bounds[1]


def test_only_the_documented_parameters_are_dynamic():
    dynamic = {spec.name for table in TABLES.values() for spec in table if spec.dynamic}
    assert dynamic == {"alpha", "required_radius", "max_frame_age"}


SHIPPED_FILES = sorted(CONFIG.parent.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda path: path.name)
def test_every_shipped_parameter_file_names_only_declared_parameters(path):
    config = yaml.safe_load(path.read_text())
    assert set(config) <= {f"/**/{node}" for node in TABLES}
    for key, section in config.items():
        listed = parameters.flatten(section["ros__parameters"])
        assert set(listed) <= set(parameters.defaults(TABLES[key.removeprefix("/**/")]))


@pytest.mark.slow
@pytest.mark.parametrize("path", [p for p in SHIPPED_FILES if p != CONFIG], ids=lambda path: path.name)
def test_a_shipped_parameter_file_applies_to_a_mixer_in_any_namespace(path, start_node, ros, spin):
    """A bare `mixer:` key would leave a namespaced mixer with its defaults, silently. (mixer.yaml holds the
    defaults themselves, so only its keys can be checked: test_yaml_lists_every_parameter_with_its_default.)"""
    from rcl_interfaces.srv import GetParameters

    _, node, executor = ros
    expected = parameters.flatten(yaml.safe_load(path.read_text())["/**/mixer"]["ros__parameters"])
    names = ["alpha", "certification", "robust_model", "robust_logit_scale"]
    namespace = f"/robot_{path.stem}/front"
    mixer = start_node("mixer_node", {"autostart": False}, namespace=namespace, params_file=path)
    client = node.create_client(GetParameters, f"{namespace}/mixer/get_parameters")
    spin(executor, lambda: client.service_is_ready() or not mixer.alive(), 60.0, "the namespaced mixer")
    assert mixer.alive(), mixer.output()
    for _ in range(3):  # a response can be lost while the service's reply path is still being discovered: ask again
        future = client.call_async(GetParameters.Request(names=names))
        if spin(executor, future.done, 10.0, "get_parameters", required=False):
            break
    assert future.done(), "no reply to get_parameters after 3 requests"
    values = future.result().values
    got = {
        "alpha": values[0].double_value,
        "certification": values[1].string_value,
        "robust_model": values[2].string_value,
        "robust_logit_scale": values[3].double_value,
    }
    node.destroy_client(client)
    assert mixer.stop() == 0
    assert got == {name: expected[name] for name in names}


def test_launch_arguments_override_the_params_file_only_when_given():
    """The rule of mixer.launch.py (its own test needs launch_ros, which PyPI does not have)."""
    assert launch_overrides("", "", "") == ({}, {})
    mixer, monitor = launch_overrides("cpu", "false", "['/a/image', 'b/image']")
    assert mixer == {"device": "cpu", "autostart": False, "image_topics": ["/a/image", "b/image"]}
    assert monitor == {"sources": ["/a/image", "/b/image"]}
    assert launch_overrides("", "True", "")[0] == {"autostart": True}


def test_the_launch_file_imports_no_torch():
    """A fresh interpreter imports every module the launch file imports (launch and launch_ros where they
    are installed) and runs its override rule: torch stays unloaded, so `ros2 launch` exits at once."""
    tree = ast.parse(LAUNCH_FILE.read_text())
    modules = sorted(
        {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    )
    assert "mix_perception.ros.launch_arguments" in modules
    script = (
        "import importlib, importlib.util, sys\n"
        f"for name in {modules!r}:\n"
        "    if importlib.util.find_spec(name.split('.')[0]) is not None:\n"
        "        importlib.import_module(name)\n"
        "from mix_perception.ros.launch_arguments import launch_overrides\n"
        "launch_overrides('cpu', 'true', '[a, b]')\n"
        "print('torch' in sys.modules)\n"
    )
    assert fresh_interpreter_prints(script) == "False"


def test_the_monitor_and_the_demo_camera_load_neither_torch_nor_scipy_stats():
    """Their modules (and the parameter tables, the verdict's statistics) import neither torch nor scipy.stats:
    they start in a fraction of a second, so a Ctrl-C during their startup ends them at once."""
    script = (
        "import sys\n"
        "import mix_perception.ros.safety_monitor, mix_perception.ros.demo_camera, mix_perception.ros.parameters\n"
        "import mix_perception.ros.safety_guarantee\n"
        "print('torch' in sys.modules or 'scipy.stats' in sys.modules)\n"
    )
    assert fresh_interpreter_prints(script) == "False"


def fresh_interpreter_prints(script: str) -> str:
    """What `script` prints, run by a new interpreter of this venv (so nothing this process imported counts)."""
    result = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()

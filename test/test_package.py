"""The installed package: generated messages next to the Python code, executables, data, CLI.

These tests check what `make build` (CMakeLists.txt) installed into the interpreter's prefix,
with real rclpy serialization and real subprocesses, no mocks. The message tests skip only where
ROS 2 is absent altogether (a plain `pip install .`).
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE_PACKAGE = REPO_ROOT / "mix_perception"
HAVE_ROS = importlib.util.find_spec("rclpy") is not None
needs_ros = pytest.mark.skipif(not HAVE_ROS, reason="ROS 2 (rclpy) is not installed")

# The message contract (msg/*.msg, the README's Topics), in rosidl's type names.
MIXED_CLASSIFICATION_FIELDS = {
    "header": "std_msgs/Header",
    "class_id": "int32",
    "label": "string",
    "probabilities": "sequence<float>",
    "alpha": "double",
    "robust_class_id": "int32",
    "robust_margin": "float",
    "certified_radius": "float",
    "certificate": "uint8",
    "norm": "string",
    "inference_ms": "float",
    "certified": "boolean",
    "certificate_confidence": "float",
    "source": "string",
    "samples": "uint32",
    "standard_class_id": "int32",
    "ood_score": "float",
    "ood_p_value": "float",
    "shift_p_value": "float",
    "input_shift_p_value": "float",
    "pipeline": "string",
}
SAFETY_STATUS_FIELDS = {
    "header": "std_msgs/Header",
    "safe": "boolean",
    "level": "uint8",
    "reason": "string",
    "certified_radius": "float",
    "required_radius": "float",
    "alpha": "double",
    "consecutive_unsafe": "uint32",
    "source": "string",
    "reasons": "sequence<string>",
}
EXECUTABLES = ["mixer_node", "safety_monitor", "demo_camera"]
DATA_PATTERNS = ["default_models/*.pt", "default_models/*.json", "data/*.npz"]


def test_tests_import_the_installed_package_not_the_source_tree(installed_package):
    import mix_perception

    assert pathlib.Path(mix_perception.__file__).resolve().parent == installed_package
    assert installed_package != SOURCE_PACKAGE.resolve()


@needs_ros
def test_messages_import_next_to_the_python_code():
    import mix_perception.cli  # noqa: F401  (the Python code of the same package)
    from mix_perception.msg import MixedClassification, SafetyStatus

    assert MixedClassification.__module__.startswith("mix_perception.msg")
    assert SafetyStatus.__module__.startswith("mix_perception.msg")


@needs_ros
def test_mixed_classification_fields_match_the_design():
    from mix_perception.msg import MixedClassification

    assert MixedClassification.get_fields_and_field_types() == MIXED_CLASSIFICATION_FIELDS


@needs_ros
def test_safety_status_fields_match_the_design():
    from mix_perception.msg import SafetyStatus

    assert SafetyStatus.get_fields_and_field_types() == SAFETY_STATUS_FIELDS


@needs_ros
def test_message_constants():
    from diagnostic_msgs.msg import DiagnosticStatus

    from mix_perception.msg import MixedClassification, SafetyStatus

    assert (MixedClassification.CERTIFICATE_NONE, MixedClassification.CERTIFICATE_LIPSCHITZ) == (0, 1)
    assert MixedClassification.CERTIFICATE_SMOOTHING == 2
    assert (SafetyStatus.OK, SafetyStatus.WARN, SafetyStatus.ERROR, SafetyStatus.STALE) == (0, 1, 2, 3)
    # "as diagnostic_msgs levels": the same numbers as DiagnosticStatus (whose levels are bytes).
    for name in ["OK", "WARN", "ERROR", "STALE"]:
        assert getattr(SafetyStatus, name) == int.from_bytes(getattr(DiagnosticStatus, name), "little")


@needs_ros
def test_mixed_classification_round_trips_through_rclpy_serialization():
    from rclpy.serialization import deserialize_message, serialize_message

    from mix_perception.msg import MixedClassification

    msg = MixedClassification()
    msg.header.stamp.sec = 12
    msg.header.stamp.nanosec = 345
    msg.header.frame_id = "camera"
    msg.class_id = 7
    msg.label = "sneaker"
    msg.probabilities = [0.125, 0.25, 0.625]
    msg.alpha = 0.6
    msg.robust_class_id = 7
    msg.robust_margin = 0.5
    msg.certified_radius = 0.25
    msg.certificate = MixedClassification.CERTIFICATE_SMOOTHING
    msg.norm = "l2"
    msg.inference_ms = 3.5
    msg.certified = True
    msg.certificate_confidence = 0.9375  # exact in float32, so == holds after the trip
    msg.source = "/camera/front/image_raw"
    msg.samples = 48

    data = serialize_message(msg)
    back = deserialize_message(data, MixedClassification)

    assert isinstance(data, bytes) and len(data) > 0
    assert back == msg
    assert list(back.probabilities) == [0.125, 0.25, 0.625]
    assert back.header.frame_id == "camera" and back.alpha == 0.6


@needs_ros
def test_safety_status_round_trips_through_rclpy_serialization():
    from rclpy.serialization import deserialize_message, serialize_message

    from mix_perception.msg import SafetyStatus

    msg = SafetyStatus(safe=False, level=SafetyStatus.ERROR, reason="radius_below_required")
    msg.certified_radius = 0.0
    msg.required_radius = 0.125  # exact in float32
    msg.alpha = 0.4
    msg.consecutive_unsafe = 3
    msg.source = "/camera/rear/image_raw"

    back = deserialize_message(serialize_message(msg), SafetyStatus)

    assert back == msg


def test_cli_help_exits_zero():
    script = pathlib.Path(sys.prefix) / "bin" / "mix-perception"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "mix_perception.cli"]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert "usage: mix-perception" in result.stdout


@needs_ros
@pytest.mark.parametrize("name", EXECUTABLES)
def test_ros_executables_are_installed(name):
    script = pathlib.Path(sys.prefix) / "lib" / "mix_perception" / name
    if not script.exists():
        pytest.skip(f"{script} absent: package not installed into this prefix by CMake")

    text = script.read_text()
    assert os.access(script, os.X_OK)
    assert text.startswith("#!")
    assert f"from mix_perception.ros.executables import {name}" in text


@needs_ros
def test_ament_index_marks_the_package():
    marker = pathlib.Path(sys.prefix) / "share" / "ament_index" / "resource_index" / "packages" / "mix_perception"
    if not (pathlib.Path(sys.prefix) / "lib" / "mix_perception").exists():
        pytest.skip("package not installed into this prefix by CMake")
    assert marker.exists()
    assert (pathlib.Path(sys.prefix) / "share" / "mix_perception" / "package.xml").exists()


def _source_files(patterns):
    return sorted({path.relative_to(SOURCE_PACKAGE) for pattern in patterns for path in SOURCE_PACKAGE.glob(pattern)})


def test_installed_package_carries_its_data(installed_package):
    if not SOURCE_PACKAGE.is_dir():
        pytest.skip("no source tree next to the tests")
    installed = installed_package
    missing = [str(rel) for rel in _source_files(DATA_PATTERNS) if not (installed / rel).is_file()]
    differ = [
        str(rel)
        for rel in _source_files(DATA_PATTERNS)
        if (installed / rel).is_file() and (installed / rel).stat().st_size != (SOURCE_PACKAGE / rel).stat().st_size
    ]
    assert not missing, f"package data not installed: {missing}"
    assert not differ, f"installed package data differs from the source: {differ} (run `make build`)"


def test_installed_python_code_is_the_current_source(installed_package, stale_files):
    """Catches testing a stale install: every source .py is installed with the same content."""
    if not SOURCE_PACKAGE.is_dir():
        pytest.skip("no source tree next to the tests")
    stale = stale_files(installed_package)
    assert not stale, f"installed mix_perception is older than the source, run `make build`: {stale}"


@needs_ros
def test_launch_and_config_are_installed():
    share = pathlib.Path(sys.prefix) / "share" / "mix_perception"
    if not share.is_dir():
        pytest.skip("package not installed into this prefix by CMake")
    for folder in ["launch", "config"]:
        for source in sorted((REPO_ROOT / folder).glob("*")):
            if source.is_file():
                assert (share / folder / source.name).is_file(), f"{folder}/{source.name} not installed in {share}"


# Every third-party module the code, launch files, benchmarks and tests import: the pip
# requirement that installs it into .venv (None: not installable from PyPI) and the package.xml
# dependency a system ROS 2 install resolves (None: optional, no rosdep key).
THIRD_PARTY = {
    "torch": ("torch", "python3-torch"),
    "torchvision": ("torchvision", "python3-torchvision"),
    "numpy": ("numpy", "python3-numpy"),
    "scipy": ("scipy", "python3-scipy"),
    "yaml": ("pyyaml", "python3-yaml"),
    "tqdm": ("tqdm", "python3-tqdm"),
    "matplotlib": ("matplotlib", "python3-matplotlib"),
    "pyautoattack": ("pyautoattack", None),
    "deel": ("deel-torchlip", None),
    "mcap": ("mcap", None),
    "PIL": ("pillow", "python3-pil"),
    "rclpy": ("ros-rclpy", "rclpy"),
    "std_msgs": ("ros-std-msgs", "std_msgs"),
    "sensor_msgs": ("ros-sensor-msgs", "sensor_msgs"),
    "diagnostic_msgs": ("ros-diagnostic-msgs", "diagnostic_msgs"),
    "rcl_interfaces": ("ros-rcl-interfaces", "rcl_interfaces"),
    "lifecycle_msgs": ("ros-lifecycle-msgs", "lifecycle_msgs"),
    "builtin_interfaces": ("ros-builtin-interfaces", "builtin_interfaces"),
    "ament_index_python": ("ros-ament-index-python", "ament_index_python"),
    "catkin_pkg": ("catkin-pkg", None),
    "launch": (None, "launch"),
    "launch_ros": (None, "launch_ros"),
    "launch_testing": (None, "launch_testing"),
    "pytest": ("pytest", "python3-pytest"),
    "hypothesis": ("hypothesis", "python3-hypothesis"),
}
SCANNED = ["mix_perception", "launch", "benchmarks", "test"]


def _imported_top_level_modules() -> dict[str, str]:
    """{module: first file importing it} over SCANNED, lazy imports inside functions included."""
    import ast

    found = {}
    local = {path.stem for folder in ("test", "benchmarks") for path in (REPO_ROOT / folder).rglob("*.py")}
    for folder in SCANNED:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "mix_perception" and top not in local:
                        found.setdefault(top, str(path.relative_to(REPO_ROOT)))
    return found


def _requirement_names() -> set[str]:
    import re

    names = set()
    for path in (REPO_ROOT / "requirements").glob("*.txt"):
        for line in path.read_text().splitlines():
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==", line)
            if match:
                names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def test_every_imported_package_is_declared():
    """A module installed by hand into one .venv must not be what the code or tests rely on."""
    if not (REPO_ROOT / "requirements").is_dir():
        pytest.skip("no source tree next to the tests")
    package_xml = (REPO_ROOT / "package.xml").read_text()
    requirements = _requirement_names()
    imported = _imported_top_level_modules()

    unknown = {module: where for module, where in imported.items() if module not in THIRD_PARTY}
    assert not unknown, f"imports not declared (add to requirements/*.txt, package.xml, THIRD_PARTY): {unknown}"
    for module in imported:
        pip_name, ros_key = THIRD_PARTY[module]
        if pip_name is not None:
            assert pip_name in requirements, f"{module} ({imported[module]}): pin {pip_name} in requirements/"
        if ros_key is not None:
            assert f">{ros_key}</" in package_xml, f"{module} ({imported[module]}): add {ros_key} to package.xml"


def test_package_xml_is_valid():
    catkin_pkg_package = pytest.importorskip("catkin_pkg.package")
    package = catkin_pkg_package.parse_package(str(REPO_ROOT / "package.xml"))
    package.validate()

    assert package.name == "mix_perception"
    assert package.package_format == 3
    assert package.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [group.name for group in package.member_of_groups]

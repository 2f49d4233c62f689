"""core/ is exactly what the node runs: it imports nothing of the package outside core/, and no ROS."""

import ast
import pathlib

ROS_MODULES = {"rclpy", "std_msgs", "sensor_msgs", "diagnostic_msgs", "rcl_interfaces", "builtin_interfaces"}


def outside_imports(source: str) -> list[str]:
    """Modules a Python source imports that core/ must not: mix_perception outside core, ROS, relative imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append("." * node.level + (node.module or ""))
                continue
            names = [node.module]
            if node.module == "mix_perception":
                names = [f"mix_perception.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] in ROS_MODULES or (parts[0] == "mix_perception" and parts[1:2] != ["core"]):
                found.append(name)
    return found


def test_the_check_catches_what_it_looks_for():
    assert outside_imports("from mix_perception.experiments import data") == ["mix_perception.experiments"]
    assert outside_imports("from mix_perception import core, ros") == ["mix_perception.ros"]
    assert outside_imports("import rclpy.node\nfrom . import mixing") == ["rclpy.node", "."]
    assert outside_imports("import torch\nfrom mix_perception.core.mixing import mix_logits") == []


def test_core_imports_nothing_of_the_package_outside_core(installed_package: pathlib.Path):
    modules = sorted((installed_package / "core").glob("*.py"))
    assert len(modules) >= 8
    found = {path.name: outside_imports(path.read_text()) for path in modules}
    assert not {name: names for name, names in found.items() if names}

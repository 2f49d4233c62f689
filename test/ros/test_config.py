"""config/mixer.yaml lists every parameter of every node with the default the node declares."""

import pathlib

import pytest
import yaml

from mix_perception.ros import parameters
from mix_perception.ros.demo_camera import EXTRA as DEMO_EXTRA

CONFIG = pathlib.Path(__file__).resolve().parents[2] / "config" / "mixer.yaml"
TABLES = {
    "mixer": parameters.MIXER,
    "safety_monitor": parameters.SAFETY_MONITOR,
    "demo_camera": parameters.DEMO_CAMERA + DEMO_EXTRA,
}


@pytest.mark.parametrize("node", sorted(TABLES))
def test_yaml_lists_every_parameter_with_its_default(node):
    config = yaml.safe_load(CONFIG.read_text())
    assert set(config) == set(TABLES)
    listed = parameters.flatten(config[node]["ros__parameters"])
    assert listed == parameters.defaults(TABLES[node])


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

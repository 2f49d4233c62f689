"""`mix-perception run`: the pipeline in one process for a bounded time, then the summary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mix_perception.commands.run import default_config

pytestmark = pytest.mark.slow  # the whole pipeline in a subprocess

CLI = Path(sys.prefix) / "bin" / "mix-perception"


def cli() -> list[str]:
    return [str(CLI)] if CLI.is_file() else [sys.executable, "-P", "-m", "mix_perception.cli"]


def test_run_with_the_demo_camera_prints_a_summary(tmp_path):
    """The shipped defaults (embedded g, Lipschitz h, deterministic certificates) on the demo camera."""
    config = yaml.safe_load(default_config().read_text())
    config["/**/mixer"]["ros__parameters"]["cpu_threads"] = 1
    config["/**/demo_camera"]["ros__parameters"]["rate"] = 20.0
    config_path = tmp_path / "mixer.yaml"
    config_path.write_text(yaml.safe_dump(config))
    summary_path = tmp_path / "summary.json"
    # a DDS domain of its own (101-200; the session's is 1-100): nodes that other tests leave running
    # publish on the same topics, e.g. the integration pipeline's /mixer/classification
    domain = str(int(os.environ["ROS_DOMAIN_ID"]) % 100 + 101)
    result = subprocess.run(
        cli() + ["run", "--demo", "--duration", "3", "--config", str(config_path), "--json", str(summary_path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=os.environ | {"ROS_DOMAIN_ID": domain},
    )
    assert result.returncode == 0, result.stderr
    for heading in ("frames classified", "latency p50 / p99", "accuracy", "certified", "safety statuses"):
        assert heading in result.stdout
    summary = json.loads(summary_path.read_text())
    assert summary["frames"] > 0 and summary["frames_with_truth"] > 0
    # the test split in the demo camera's fixed order; on all 5,000: 91.2% right, ~79% certified at 0.1
    assert summary["accuracy"] > 0.8 and 0.5 < summary["certified_fraction"] < 1.0
    assert summary["mixer"]["rejected"] == 0
    # every safe verdict of a frame with ground truth is paired with its classification by stamp
    assert 0 < summary["safe_with_truth"] <= summary["frames_with_truth"]
    assert 0 <= summary["safe_wrong"] <= summary["safe_with_truth"]
    assert set(summary["flags_by_reason"]) <= {"stale_stream", "not_certified", "radius_below_required"} | {
        "below_acceptance_threshold", "out_of_distribution", "distribution_shift"  # the shipped verdict
    }


def test_run_with_a_bad_config_fails_with_one_line(tmp_path):
    result = subprocess.run(
        cli() + ["run", "--config", str(tmp_path / "nope.yaml"), "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"mix-perception run: error: parameter file {tmp_path / 'nope.yaml'} not found"
    ]

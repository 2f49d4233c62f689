"""The mixer's malloc settings (mix_perception.ros.allocator); their effect on memory under frames of
every size is measured by benchmarks/soak.py, not asserted here."""

import platform

import pytest

from mix_perception.ros.allocator import tune_malloc


def test_glibc_accepts_the_malloc_settings():
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc: the settings do not apply")
    assert tune_malloc()

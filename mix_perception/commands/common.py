"""Kept only for commands/run.py, which imports positive_float from here: remove this module once run.py
imports it from mix_perception.commands.arguments."""

from mix_perception.commands.arguments import positive_float

__all__ = ["positive_float"]

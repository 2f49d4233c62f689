"""Torch-only core: mixing, certificates, smoothing, models, attacks, evaluation. Never imports ROS."""

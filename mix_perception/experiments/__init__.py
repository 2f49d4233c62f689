"""The offline toolkit behind `mix-perception evaluate`, `calibrate` and `train-default`: data, training,
attacks, alpha sweeps, certified curves, the calibration search, parameter files, plots.

Imports mix_perception.core; neither core nor the ROS nodes import this package."""

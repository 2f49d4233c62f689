"""The offline toolkit: data, training, attacks, sweeps, certified curves, calibration, plots."""

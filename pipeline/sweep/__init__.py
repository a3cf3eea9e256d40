"""Hyperparameter sweeps: search space, runner, trial function, results report."""

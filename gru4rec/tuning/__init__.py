"""Hyper-parameter search (optuna) over training runs, selected on a validation file."""

"""Offline evaluation: the full-ranking protocol, metrics, reports, comparisons and the baselines."""

"""Experiment grids: method comparisons through the real engine (grid, runner, aggregate, plots)."""

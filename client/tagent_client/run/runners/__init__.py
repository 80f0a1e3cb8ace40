"""The runners: each executes one task of a step (`execute.py` picks the runner for the step)."""

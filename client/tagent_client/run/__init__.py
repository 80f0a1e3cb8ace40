"""Running steps: the in-process runner, what a step sees (its context), the in-process broker, and the runners
that execute one task of a function, agent or TAgent step (shared with the daemon's workers)."""

"""Training and evaluation engine: metrics, optimisers and schedules, run outputs."""

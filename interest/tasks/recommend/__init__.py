"""Task ``recommend``: top-N items per user (two-tower model, closed-form baselines)."""

"""Stage two on cached features: the `head` and `sweep` commands, seeds, and each run's evaluation
(metrics, confusion heatmaps, curves)."""

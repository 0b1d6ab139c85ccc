"""Stage two on cached features: the `head` and `sweep` commands (a sweep's grid, parallel workers and
leaderboard), seeds, and each run's evaluation (metrics, confusion heatmaps, curves, calibration,
predictions and mistakes)."""

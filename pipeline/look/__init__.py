"""Looking at results: the `neighbors`, `audit`, `map`, `compare` and `report` (the site: its runs
collected, its pages written) commands."""

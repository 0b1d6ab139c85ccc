"""Looking at results: the `neighbors`, `audit`, `map`, `compare` and `report` (the site) commands, and
the mistakes/predictions views and image grids they share."""

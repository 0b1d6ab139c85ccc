"""Under every command: errors, atomic writes and locks, the cache layout and its records, flag types,
progress, statistics, and the watchdog that reaps a killed run's workers."""

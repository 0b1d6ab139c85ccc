"""Stage one, the `features` command: one plan of shards, run by the local or the Ray engine, rows
written by the driver; test-time views; and stage one's check, the `verify` command."""

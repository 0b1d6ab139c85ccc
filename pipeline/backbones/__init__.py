"""The backbone table and what it builds: uint8 images -> float32 features, BN folded, in the chosen
precision. The `backbones` command lists the table."""

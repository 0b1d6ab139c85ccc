"""The backbone table and what it builds: uint8 images -> float32 features, BN folded, in the chosen
precision; Keras files and the backbone + head image model that stage three and shipping both deliver.
The `backbones` command lists the table."""

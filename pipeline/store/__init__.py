"""The HDF5 row store every stage-one and activation file uses: streaming resumable writer, the one
validating reader, and the `info` command."""

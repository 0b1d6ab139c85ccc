"""What a result was computed with: library versions and the machine (bfloat16 rows depend on the CPU's
arithmetic, so `verify` can name what changed). TensorFlow and Keras are imported inside
`versions`, so the commands that only read files never load them."""
from __future__ import annotations

import platform
from pathlib import Path

import numpy


def versions() -> dict:
    import h5py
    import keras
    import tensorflow
    return {"python": platform.python_version(), "numpy": numpy.__version__, "h5py": h5py.__version__,
            "hdf5": h5py.version.hdf5_version, "tensorflow": tensorflow.__version__, "keras": keras.__version__,
            # the machine too: bfloat16 rows depend on the CPU's arithmetic (`verify` names what changed)
            "cpu": cpu_model(), "gpus": ", ".join(tensorflow.config.experimental.get_device_details(d).get("device_name", d.name)
                                                  for d in tensorflow.config.list_physical_devices("GPU"))}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; elsewhere what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()

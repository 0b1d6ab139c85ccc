"""The one choice of precision and device, made once at start-up: `auto` is bfloat16 where the CPU has
AMX/AVX512-BF16 (or a GPU runs), float32 elsewhere; POLICY maps it to Keras's dtype policy."""
from __future__ import annotations

from pathlib import Path

POLICY = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


CPUINFO = Path("/proc/cpuinfo")        # a name, so tests can fake each kind of CPU


def cpu_has_bf16() -> bool:
    """True on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX), where it pays off."""
    try:
        flags = CPUINFO.read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str) -> tuple[str, str]:
    """'auto' -> float16 on a GPU, bfloat16 on a CPU with bf16 units, else float32; any other of the
    declared precisions (checked by the settings layer) as it is. Returns (precision, device description)."""
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    device = f"GPU ({len(gpus)} visible)" if gpus else "CPU"
    if precision == "auto":
        precision = "float16" if gpus else ("bfloat16" if cpu_has_bf16() else "float32")
    return precision, device

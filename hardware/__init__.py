"""What the machine offers a run: the precision it computes in natively, and the cores it may use.

Both stages and the evaluation ask here, so every command resolves `auto` and
counts cores by the same rule. This package imports nothing of ours, and torch
only when asked about a device, so the command line can import it cheaply.
"""

from clasp.hardware.cores import (
    available_cores, cores_per_process, dataloader_workers, torch_threads, use_available_cores,
)
from clasp.hardware.memory import available_memory
from clasp.hardware.precision import (
    PRECISION_HELP, PRECISIONS, Capability, PrecisionChoice, PrecisionError, probe_capability, resolve_precision,
)

__all__ = [
    "PRECISION_HELP", "PRECISIONS", "Capability", "PrecisionChoice", "PrecisionError", "available_cores", "available_memory",
    "cores_per_process", "dataloader_workers", "probe_capability", "resolve_precision", "torch_threads", "use_available_cores",
]

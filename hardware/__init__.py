"""What the machine offers a run: the precision it computes in natively, the cores it may use, whether
compiling pays (`compile.py`), and host memory kept for reuse where a model computes on the CPU
(`host_memory.py`).

Both stages and the evaluation ask here, so every command resolves `auto` and
counts cores by the same rule. This package imports nothing of ours but
`clasp.errors`, and torch only when asked about a device, so the command line can import it cheaply.
"""

from clasp.hardware.cores import (
    available_cores, cores_per_process, dataloader_workers, set_torch_threads, thread_choice, torch_threads,
    use_available_cores,
)
from clasp.hardware.memory import available_memory
from clasp.hardware.threads import THREADS_HELP, THREADS_LIMITS, THREADS_SHOWN, ThreadChoice, choose_threads
from clasp.hardware.precision import (
    DEFAULT_PRECISION, PRECISION_HELP, PRECISIONS, Capability, PrecisionChoice, PrecisionError, probe_capability,
    resolve_precision,
)

__all__ = [
    "DEFAULT_PRECISION", "PRECISION_HELP", "PRECISIONS", "THREADS_HELP", "THREADS_LIMITS", "THREADS_SHOWN", "Capability",
    "PrecisionChoice",
    "PrecisionError", "ThreadChoice", "available_cores", "available_memory", "choose_threads", "cores_per_process",
    "dataloader_workers", "probe_capability", "resolve_precision", "set_torch_threads", "thread_choice",
    "torch_threads",
    "use_available_cores",
]

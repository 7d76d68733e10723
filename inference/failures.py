"""Which engine errors belong to one request and which to the machine.

A request can make the engine raise (a prompt the kernels reject, memory for one long prompt): the handler
bisects the batch so only that request fails. Some errors say the accelerator itself is broken: a CUDA
device-side assert or an illegal memory access leaves the CUDA context unusable, so every later call in the
process fails too. Bisecting those would repeat ~2N failing calls and dead-letter every record; instead the
worker fails (``DeviceFailure``) and the runner retries the bundle on a healthy one. Checked without torch:
fake engines and the Beam side run without it.
"""

from __future__ import annotations

import sys

# Sticky CUDA errors: after one of these the process's CUDA context is unusable (NVIDIA's "sticky" errors).
DEVICE_FAILURE_MARKERS = (
    "device-side assert",
    "illegal memory access",
    "cublas_status_",
    "cudnn_status_",
    "unspecified launch failure",
    "uncorrectable ecc error",
    "misaligned address",
    "illegal instruction was encountered",
    "cuda driver version is insufficient",
)


class DeviceFailure(RuntimeError):
    """The accelerator failed; no request of this process can run. Raised to fail the bundle (the runner
    retries it elsewhere), never turned into dead letters."""


def is_device_failure(err: BaseException) -> bool:
    """A ``DeviceFailure``, or an error whose message names a sticky accelerator fault."""
    if isinstance(err, DeviceFailure):
        return True
    text = str(err).lower()
    return any(marker in text for marker in DEVICE_FAILURE_MARKERS)


def is_out_of_memory(err: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError (and the older RuntimeError "CUDA out of memory"), checked without torch."""
    return type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


def device_failure(err: BaseException) -> DeviceFailure:
    """The DeviceFailure to raise for ``err``, saying what happens next."""
    if isinstance(err, DeviceFailure):
        return err
    return DeviceFailure(
        f"the accelerator failed ({type(err).__name__}: {err}); this worker cannot run the model any more, so "
        "the bundle fails and the runner retries it on another worker"
    )


def release_accelerator_memory() -> None:
    """Give the allocator's cached blocks back after an OOM, so the smaller retry has room."""
    torch = sys.modules.get("torch")  # never import torch just for this: fake engines run without it
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()

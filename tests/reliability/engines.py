"""Fake engines that fail the way real ones do: a whole call raising because of one request, the device
breaking for good, or running out of GPU memory."""

from __future__ import annotations

from tests.transforms.fakes import FakeEngine

CRASH = "CRASH"  # a prompt containing this makes the whole engine call raise


class _FailingEngine(FakeEngine):
    """A FakeEngine whose every call first passes ``_check``, which raises the failure being simulated."""

    def _check(self, prompts) -> None:
        raise NotImplementedError

    def score(self, prompts, candidates, **kwargs):
        self._check(prompts)
        return super().score(prompts, candidates, **kwargs)

    def generate(self, prompts, params):
        self._check(prompts)
        return super().generate(prompts, params)


class CrashingEngine(_FailingEngine):
    """Raises for any call that includes a CRASH prompt (as a kernel rejecting one input fails the batch)."""

    def _check(self, prompts) -> None:
        if any(CRASH in self._text(p) for p in prompts):
            raise RuntimeError("index out of range in self")


class BrokenDeviceEngine(_FailingEngine):
    """Every call fails the way a GPU with a corrupted CUDA context does; ``calls`` counts the attempts."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def _check(self, prompts) -> None:
        self.calls += 1
        raise RuntimeError("CUDA error: device-side assert triggered")


class CalibrationFailingEngine(_FailingEngine):
    """Raises for any call that scores a content-free calibration prompt ("N/A"); ``calls`` counts calls."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.calls = 0

    def _check(self, prompts) -> None:
        self.calls += 1
        if any('"""N/A"""' in self._text(p) for p in prompts):
            raise RuntimeError("kernel failed on the calibration prompt")


class OutOfMemoryEngine(_FailingEngine):
    """Raises torch.cuda.OutOfMemoryError for calls with more than ``fits`` prompts."""

    def __init__(self, fits: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fits = fits
        self.attempts: list[int] = []

    def _check(self, prompts) -> None:
        import torch

        self.attempts.append(len(prompts))
        if len(prompts) > self.fits:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(prompts)} GiB")

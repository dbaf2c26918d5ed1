"""The peak memory of one model's training run, for ``timm-kan compare``'s table."""
import contextlib
from pathlib import Path

import torch

__all__ = ['PeakMemory']


class PeakMemory:
    """Peak memory of one model's run: the CUDA allocator's peak, or on CPU the process's peak RSS.

    On CPU the kernel's high-water mark (VmHWM) is reset through ``/proc/self/clear_refs`` before each model:
    it is the only per-model peak Linux keeps without a sampling thread, and the reset touches nothing but this
    process's own peak counter. Where the file cannot be written the figure is the process's peak so far.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError):
            Path('/proc/self/clear_refs').write_text('5')

    def peak_mib(self) -> float:
        if self.device.type == 'cuda':
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        with contextlib.suppress(OSError):
            for line in Path('/proc/self/status').read_text().splitlines():
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

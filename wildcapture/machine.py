"""One line naming the machine a figure was measured on: CPU model, threads, torch version, device."""
from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """Return the CPU's model name (from /proc/cpuinfo on Linux, else what `platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: str = "auto") -> str:
    """Return e.g. 'machine: AMD EPYC 7B13, 2 threads, torch 2.14.1, device cpu' for the config value
    `device` ('auto' resolves as the stages resolve it; a CUDA device adds the GPU's name)."""
    import torch  # here, so importing this module stays cheap

    from wildcapture.runtime import pick_device
    resolved = pick_device(device)
    gpu = f" ({torch.cuda.get_device_name(resolved)})" if resolved.type == "cuda" else ""
    return (f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"device {resolved}{gpu}")

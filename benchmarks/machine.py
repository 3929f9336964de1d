"""One line naming the machine a benchmark ran on (imported by the scripts in this folder)."""
from __future__ import annotations

import os
import platform

import torch


def describe() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (
        f"machine: {cpu}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}){gpu}; "
        f"torch {torch.__version__}, Python {platform.python_version()}"
    )

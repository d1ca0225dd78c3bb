"""Which device sepfl runs on.

Configs check only how ``device`` is spelled (:func:`sepfl._validate.check_device`),
so a config naming "cuda" can be built and read on a CPU-only machine; whether
the hardware is there is asked here, by the function that runs on it
(:func:`sepfl.cluster.cluster`, :func:`sepfl.train.train`).
"""
from __future__ import annotations

import functools
from typing import Optional, Union

import torch

from sepfl._validate import Array, check_device, is_tensor

__all__ = ["has_cuda", "resolve_device", "free_memory", "cpu_flags", "cpu_bf16_units",
           "cpu_has_amx"]


def has_cuda() -> bool:
    """True when the CUDA module ``sepfl._cuda`` was built and a GPU is usable."""
    try:
        from sepfl import _cuda
    except ImportError:
        return False
    return _cuda.device_count() > 0 and torch.cuda.is_available()


def resolve_device(device: Union[str, torch.device, None], data: Optional[Array] = None,
                   native: bool = True) -> torch.device:
    """The torch device to run on: the one resolver of sepfl.

    Parameters
    ----------
    device : {"cpu", "cuda", "cuda:N"}, torch.device or None
        None means where ``data`` lives when it is given, else a GPU when
        :func:`has_cuda`, else the CPU.
    data : numpy array or torch tensor, optional
        The input whose device None stands for (a numpy array lives on the CPU).
    native : bool
        Whether the run needs sepfl's CUDA module (the pipeline's kernels) or
        only torch's CUDA (the kNN search): which test a CUDA device must pass.

    Raises
    ------
    ValueError
        Any other spelling, or a CUDA device that cannot be used.
    """
    if device is None and data is not None:
        return data.device if is_tensor(data) else torch.device("cpu")
    if device is None:
        return torch.device("cuda" if has_cuda() else "cpu")
    resolved = check_device(device)
    usable = has_cuda() if native else torch.cuda.is_available()
    if resolved.type == "cuda" and not usable:
        why = " to sepfl (no usable GPU, or built without its CUDA module)" if native else ""
        raise ValueError(f"device {str(device)!r} was asked for, but CUDA is not available{why}")
    return resolved


def free_memory(device: torch.device, meminfo: str = "/proc/meminfo") -> Optional[int]:
    """Bytes a new allocation can take on ``device`` now, or None when unknown.

    CUDA: the driver's free memory; CPU: the kernel's ``MemAvailable`` (Linux;
    None elsewhere).
    """
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open(meminfo) as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@functools.lru_cache(maxsize=None)
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset:
    """The CPU feature flags Linux lists in ``path``; empty where it cannot be read."""
    try:
        with open(path, encoding="ascii", errors="replace") as cpuinfo:
            return frozenset(flag for line in cpuinfo if line.startswith("flags")
                             for flag in line.split(":", 1)[1].split())
    except OSError:
        return frozenset()


def cpu_bf16_units() -> frozenset:
    """The bfloat16 matrix units torch's CPU products use here: those of "amx_bf16" and
    "avx512_bf16" the CPU lists, where torch runs its AVX-512 kernels with oneDNN; else none."""
    if not (torch.backends.mkldnn.is_available()
            and torch.backends.cpu.get_cpu_capability().startswith("AVX512")):
        return frozenset()
    return cpu_flags() & {"amx_bf16", "avx512_bf16"}


def cpu_has_amx() -> bool:
    """Whether torch's bfloat16 matrix products run on AMX here (:func:`cpu_bf16_units`)."""
    return "amx_bf16" in cpu_bf16_units()

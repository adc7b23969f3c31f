"""Choosing the torch device, the same way for training and serving."""

from __future__ import annotations

import torch


class DeviceUnavailableError(RuntimeError):
    """`cuda` was asked for on a machine where PyTorch sees no CUDA GPU."""


def resolve_device(choice: str, setting: str) -> torch.device:
    """`auto` takes the GPU when there is one; `cuda` without one is an error naming `setting`."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"{setting}=cuda but no CUDA GPU is visible to PyTorch; use {setting}=auto or cpu"
        )
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)

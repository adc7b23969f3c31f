"""Reading a published checkpoint: the one place that calls `torch.jit.load`.

A checkpoint is `model.pt` (TorchScript, with its metadata embedded as the extra file
`model.json`) and, beside it, the same metadata as `model.json` plus the file's sha256.
The embedded copy cannot hold the hash of the file that contains it, so it carries
`weights_sha256` (a hash of the parameters, see `weights_sha256`) instead; both are checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

METADATA_NAME = "model.json"
FORMAT_VERSION = 1
REQUIRED_METHODS = ("encode", "decode", "reconstruct", "score", "anomaly_terms", "importance_terms")


class CheckpointError(RuntimeError):
    """The checkpoint cannot be used; the message says what is wrong and where."""


@dataclass(frozen=True)
class Checkpoint:
    module: torch.jit.ScriptModule
    metadata: dict[str, Any]
    path: Path
    file_sha256: str

    @property
    def model_id(self) -> str:
        return str(self.metadata["model_id"])

    @property
    def latent_dim(self) -> int:
        return int(self.metadata["architecture"]["latent_dim"])


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def weights_sha256(module: torch.nn.Module) -> str:
    """Hash of every parameter and buffer: name, dtype, shape and bytes, in name order."""
    return state_dict_sha256(module.state_dict())


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + ".json")


def load_checkpoint(path: Path, device: torch.device) -> Checkpoint:
    """Load, verify and move a checkpoint to `device`; raise CheckpointError on any defect."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"model file not found: {path}") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    file_sha256 = sha256_bytes(data)
    extra_files = {METADATA_NAME: ""}
    try:
        with warnings.catch_warnings():
            # Deprecated upstream, but TorchScript is this service's checkpoint format.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.* is deprecated")
            module = torch.jit.load(io.BytesIO(data), map_location=device, _extra_files=extra_files)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable TorchScript checkpoint ({first_line})"
        ) from None
    metadata = _parse_metadata(extra_files[METADATA_NAME], path)
    _check_sidecar(path, file_sha256, metadata)
    _check_weights(module, metadata, path)
    missing = [name for name in REQUIRED_METHODS if not hasattr(module, name)]
    if missing:
        raise CheckpointError(f"{path} lacks the exported methods {', '.join(missing)}")
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)  # inference only: no autograd graph, no grad warnings
    return Checkpoint(module=module, metadata=metadata, path=path, file_sha256=file_sha256)


def _parse_metadata(raw: str | bytes, path: Path) -> dict[str, Any]:
    if not raw:
        raise CheckpointError(f"{path} has no embedded {METADATA_NAME}: not exported by vae-train")
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path}: embedded {METADATA_NAME} is not valid JSON ({exc})"
        ) from None
    if not isinstance(metadata, dict) or metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: metadata format_version must be {FORMAT_VERSION}, "
            f"got {metadata.get('format_version') if isinstance(metadata, dict) else metadata!r}"
        )
    return metadata


def _check_sidecar(path: Path, file_sha256: str, embedded: dict[str, Any]) -> None:
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        return
    try:
        published = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {sidecar}: {exc}") from None
    expected = published.get("sha256")
    if expected != file_sha256:
        raise CheckpointError(
            f"sha256 mismatch for {path}: {sidecar.name} says {expected}, file is {file_sha256}"
        )
    if published.get("weights_sha256") != embedded.get("weights_sha256"):
        raise CheckpointError(f"{sidecar} describes different weights than {path} embeds")


def _check_weights(module: torch.nn.Module, metadata: dict[str, Any], path: Path) -> None:
    expected = metadata.get("weights_sha256")
    actual = weights_sha256(module)
    if expected != actual:
        raise CheckpointError(
            f"weights sha256 mismatch for {path}: "
            f"metadata says {expected}, weights hash to {actual}"
        )

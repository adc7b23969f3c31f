"""Writing a checkpoint: the one place that calls `torch.jit.save`."""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from training.model import VAE
from vae_common.checkpoint import (
    FORMAT_VERSION,
    METADATA_NAME,
    sha256_bytes,
    sidecar_path,
    weights_sha256,
)


def script_model(model: VAE) -> torch.jit.ScriptModule:
    """A CPU TorchScript copy in eval mode; the original model is left untouched."""
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream, but it is the one format this service's
        # contract names (a single self-contained file, no Python model code needed).
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")
        scripted: torch.jit.ScriptModule = torch.jit.script(copy.deepcopy(model).cpu().eval())
    return scripted


def export_checkpoint(
    scripted: torch.jit.ScriptModule, metadata: dict[str, Any], model_path: Path
) -> dict[str, Any]:
    """Save `scripted` with `metadata` embedded, write the sidecar JSON; return the sidecar.

    The embedded copy carries `weights_sha256`; the sidecar adds the file's own `sha256`.
    """
    weights_hash = weights_sha256(scripted)
    arch = metadata["architecture"]
    embedded = {
        "format_version": FORMAT_VERSION,
        "model_id": f"vae-{arch['arch']}-z{arch['latent_dim']}-{weights_hash[:12]}",
        **metadata,
        "weights_sha256": weights_hash,
    }
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # As in script_model: TorchScript is the checkpoint format by design, so the upstream
        # deprecation notice would only alarm whoever runs vae-train.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.save.* is deprecated")
        torch.jit.save(
            scripted, buffer, _extra_files={METADATA_NAME: json.dumps(embedded, sort_keys=True)}
        )
    data = buffer.getvalue()
    model_path.parent.mkdir(parents=True, exist_ok=True)
    model_path.write_bytes(data)
    sidecar = {**embedded, "sha256": sha256_bytes(data), "size_bytes": len(data)}
    sidecar_path(model_path).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return sidecar

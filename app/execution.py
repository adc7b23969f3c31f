"""Where and how the model's tensors are computed: one Execution per process, chosen at
start-up from VAE_DEVICE. The engine hands every forward pass to it; nothing else in the
service knows which back end runs.

- CpuExecution: convolution weights in channels_last order (VAE_CHANNELS_LAST), intra-op
  threads (torch's pool, one thread for small batches, one per instance with several model
  instances), bfloat16 weights and autocast when asked (VAE_PRECISION=bf16), and the
  process tuning `python -m app` applies (oneDNN kernel cache,
  glibc malloc arenas).
- CudaExecution: device placement, inputs staged in pinned host buffers and copied
  without blocking, outputs copied back once per batch.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Literal

import torch

from vae_common.devices import resolve_device

logger = logging.getLogger("app.execution")

# Batches smaller than this run on one intra-op thread (see intra_op_threads). One-image
# traffic forms batches of ~10-20 images; 64-image requests form batches of 64 and more.
SMALL_BATCH_IMAGES = 32
Precision = Literal["fp32", "bf16"]
# oneDNN keeps compiled kernels per input shape in a cache. Forward passes run at fixed
# batch buckets (app.engine.padded_batch_size): up to 256 images that is 328 kernels, all
# compiled at start-up. 512 holds them and some Monte Carlo shapes, so serving neither
# recompiles nor grows (the library default, 1024, with unbucketed batch sizes grew
# resident memory for tens of thousands of requests; 128 thrashed).
ONEDNN_CACHE_CAPACITY = "512"
# glibc malloc tuning (mallopt parameter number from <malloc.h>).
M_ARENA_MAX = -8


class Execution:
    """The seam between the engine and a device. Methods run on the inference threads."""

    device: torch.device
    precision: Precision = "fp32"  # VAE_PRECISION; only CpuExecution offers bf16
    channels_last: bool = False  # VAE_CHANNELS_LAST; only CpuExecution applies it

    def prepare(self, module: torch.jit.ScriptModule) -> None:
        """Adapt a freshly loaded model to this back end, before its first forward pass."""

    def running(self, rows: int) -> AbstractContextManager[None]:
        """Context of one forward pass over `rows` (padded) rows."""
        return nullcontext()

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def to_host(self, output: torch.Tensor) -> torch.Tensor:
        return output

    def after_warm_up(self) -> None:
        """Called once every bucket has run (CUDA graphs would be captured here)."""

    def close(self) -> None:
        """Undo process-wide settings made at start-up."""


class CpuExecution(Execution):
    def __init__(
        self,
        torch_threads: int = 0,
        model_instances: int = 1,
        precision: Precision = "fp32",
        channels_last: bool = True,
    ) -> None:
        """`torch_threads`: intra-op threads (0 keeps torch's default). With several model
        instances every batch runs on one thread, so batches run side by side instead of
        splitting every operation across the cores. Set here, before the inference threads
        start (they take this setting), so that no instance changes it mid-batch.
        `precision` "bf16": every forward pass runs in bfloat16 (see `prepare`); outputs
        come back as float32. `channels_last`: see `prepare`."""
        self.device = torch.device("cpu")
        self.precision: Precision = precision
        self.channels_last = channels_last
        if precision == "bf16" and not native_bf16():
            logger.warning(
                "VAE_PRECISION=bf16 on a CPU without AMX or AVX-512 BF16: oneDNN emulates "
                "bfloat16 here, which can be slower than fp32 (compare both with "
                "python -m benchmarks.cpu_layout)"
            )
        self._threads_before = torch.get_num_threads()  # restored by close()
        if model_instances > 1:
            torch.set_num_threads(1)
        elif torch_threads:
            torch.set_num_threads(torch_threads)
        # Intra-op threads for batches of SMALL_BATCH_IMAGES or more.
        self.large_batch_threads = torch.get_num_threads()

    def prepare(self, module: torch.jit.ScriptModule) -> None:
        """Convolution weights to channels_last (NHWC) order: every activation after the
        first convolution follows, and oneDNN runs the same float32 arithmetic in that order
        faster. Model v2 as served, one thread (benchmarks/cpu_layout.py, 2-core Xeon,
        2026-11-29): default score 3-16% faster by batch size, /sample 10-20%, and 20-36%
        for batches of 64+ under VAE_PRECISION=bf16; float32 outputs within rounding (scores
        2e-4, pixels 1e-6). The weights' hash does not change (vae_common.checkpoint hashes
        contiguous copies).

        VAE_PRECISION=bf16: the parameters are stored in bfloat16 once, here. Autocast
        would round the same float32 weights to the same bfloat16 values, but on every
        pass: for model v2 that copy cost more than the AMX kernels saved on batches under
        ~32 images. Cast once, the outputs are bit for bit those of autocast over float32
        weights, and a pass of 16 images takes ~0.42 against ~0.76 ms per image in float32
        (benchmarks/cpu_layout.py). Buffers (the latent prior) stay float32, as autocast
        leaves them."""
        if self.channels_last:
            module.to(memory_format=torch.channels_last)  # nn.Module.to: 4-D tensors only
        if self.precision == "bf16":
            for parameter in module.parameters():
                # .to keeps the memory order (channels_last) of each tensor.
                parameter.data = parameter.data.to(torch.bfloat16)

    def running(self, rows: int) -> AbstractContextManager[None]:
        return self._batch(rows)

    @contextmanager
    def _batch(self, rows: int) -> Iterator[None]:
        threads = 1 if rows < SMALL_BATCH_IMAGES else self.large_batch_threads
        # Every pass, whatever its size: with bfloat16 weights there is no float32 pass, and
        # a reply does not depend on the batch it shared (a test checks).
        bf16 = self.precision == "bf16"
        with (
            intra_op_threads(min(threads, getattr(_thread_cap, "threads", threads))),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16),
        ):
            yield

    def to_host(self, output: torch.Tensor) -> torch.Tensor:
        return output.float() if output.dtype == torch.bfloat16 else output

    def close(self) -> None:
        torch.set_num_threads(self._threads_before)

    @staticmethod
    def tune_process() -> None:
        """Process-wide tuning for `python -m app`, before any model runs."""
        # oneDNN reads its cache capacity when it builds the cache, at the first kernel.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)
        # uvicorn's extra worker processes (VAE_WORKERS > 1) are new interpreters: glibc
        # reads this at their start-up. This process is already running, hence mallopt.
        os.environ.setdefault("MALLOC_ARENA_MAX", "2")
        limit_malloc_arenas()


class CudaExecution(Execution):
    """Inputs go host -> pinned buffer -> GPU without blocking the host; the copy of the
    outputs back is the one synchronisation per batch. Pinned buffers are kept per thread
    and per bucket shape: several model instances never share one, and a thread reuses its
    buffer only after its previous batch has come back (to_host waited for it)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers = threading.local()

    def running(self, rows: int) -> AbstractContextManager[None]:
        return torch.cuda.device(self.device)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        buffers: dict[tuple[int, ...], torch.Tensor] = self._buffers.__dict__.setdefault(
            "by_shape", {}
        )
        staging = buffers.get(tuple(x.shape))
        if staging is None:
            staging = buffers[tuple(x.shape)] = pinned_empty(tuple(x.shape), x.dtype)
        staging.copy_(x)
        return staging.to(self.device, non_blocking=True)

    def to_host(self, output: torch.Tensor) -> torch.Tensor:
        return output.to("cpu")

    def after_warm_up(self) -> None:
        # Warm-up has run every bucket: kernels are loaded and the caching allocator holds
        # each bucket's memory.
        # TODO(cuda-graphs): capture one torch.cuda.CUDAGraph per (forward, bucket) here and
        # replay it in Engine.run. Not done: it has never run on a GPU (none was available),
        # and it is only safe when (1) each captured forward is a pure function of its
        # static input buffer (Monte Carlo scores draw noise inside the model: capture them
        # with a graph-safe generator or leave them uncaptured), (2) every model instance
        # thread has its own graphs and static buffers, (3) a reloaded engine captures anew,
        # and (4) outputs are copied out of the static buffers before the next replay.
        # Measure first with benchmarks/gpu.sh: at ~1 ms per batch, launch overhead may not
        # be what limits the service.
        torch.cuda.synchronize(self.device)


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AMX tiles or AVX-512 BF16), where
    VAE_PRECISION=bf16 was measured ~2x faster than fp32."""
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    # Private probes of torch.cpu; a torch without them is treated as lacking both.
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def pinned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def choose_execution(
    device_choice: str,
    torch_threads: int,
    model_instances: int,
    precision: Precision = "fp32",
    channels_last: bool = True,
) -> Execution:
    """VAE_DEVICE -> its Execution; DeviceUnavailableError for cuda without a GPU.
    VAE_PRECISION and VAE_CHANNELS_LAST apply to the CPU (never measured on a GPU, so not
    offered there)."""
    device = resolve_device(device_choice, "VAE_DEVICE")
    if device.type == "cuda":
        return CudaExecution(device)
    return CpuExecution(torch_threads, model_instances, precision, channels_last)


_thread_cap = threading.local()


def one_intra_op_thread() -> None:
    """Executor initializer for the heavy lane's thread (app.batching.Lanes): its forward
    passes use one intra-op thread, whatever their size, leaving the other cores to the
    cheap lane and the event loop."""
    _thread_cap.threads = 1


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run torch ops on this thread with `count` intra-op threads.

    Small batches gain little from more threads (measured: 0.69 vs 0.66 ms for one image),
    and when many small requests keep the event loop busy, an OpenMP team that spins after
    each op takes the cores it needs. Large batches are the model's work alone: on 2 cores,
    64-image requests ran at 83-88 requests/s with two threads against 67-75 with one
    (serve_load, 3 rounds each, back to back).
    """
    previous = torch.get_num_threads()
    if count == previous:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def limit_malloc_arenas() -> None:
    """At most two glibc malloc arenas, so the heap stops growing under varying batch sizes.

    By default every thread that allocates (the decode/encode pool, the inference thread)
    may get an arena of its own, and freed memory scattered over them is not returned.
    Mixed soak after the load scenarios, RSS every 4,000 requests: 737, 737, 764, 781, 781,
    782 MiB with the default; 745, 745, 745, 745, 745, 745 MiB with two arenas. (A fixed
    128 KiB mmap threshold kept RSS lower still, but put every batch buffer through mmap
    and cut 64-image throughput by ~40%.) Same as MALLOC_ARENA_MAX=2; no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_ARENA_MAX, 2)

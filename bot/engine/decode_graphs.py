"""Captured decode: the step where every row produces one token, over static buffers, replayed
as a CUDA graph per bucketed batch size (nano-vllm's and vLLM's design, over our KV arena).

A decode step's shape depends only on how many rows decode, so it can be captured once per
batch size and replayed: one launch instead of the ~15 ms of Python and kernel launches an
eager step of the real model costs. Batch sizes are bucketed ([1, 2, 4, 8] then every 16, then
MAX_BATCH): a step with fewer rows pads up to its bucket. A padding row writes its key and
value to the arena's scratch slot (one slot past every span: `KVArena.scratch_slot`) and
attends only to that slot, so no real row ever reads what padding wrote, and padding never
reads a real row.

The same code fills the buffers, picks the bucket and pads on every device. On CUDA the step
is captured (after one eager run of it, which the first replay must match bit for bit, or the
engine stays eager) and replayed; elsewhere "replay" calls the same step function eagerly
over the same buffers, which is what the CPU tests drive. Graphs hold the arena's tensors by
address: when the arena is reallocated (grown, or released after a failure) the graphs are
captured again before the next replay.

Not thread-safe: the engine's one worker thread owns it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from bot.engine.kv_cache import KVArena
from bot.engine.neox_forward import Segment, StepPlan, Varlen, packed_forward

if TYPE_CHECKING:
    from transformers import GPTNeoXForCausalLM

log = logging.getLogger(__name__)


def buckets(max_batch: int) -> tuple[int, ...]:
    """The captured batch sizes: 1, 2, 4, 8, then every multiple of 16, and MAX_BATCH itself."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch]
    sizes += [b for b in range(16, max_batch, 16)]
    return (*sizes, max_batch)


def bucket_for(rows: int, sizes: Sequence[int]) -> int | None:
    """The smallest bucket that holds `rows` (None: more rows than the largest)."""
    return next((size for size in sizes if size >= rows), None)


@dataclass(frozen=True, slots=True)
class DecodeRow:
    """One decoding row as the step needs it: its arena span's start, the tokens it has cached
    (the new token's position), and the token it feeds."""

    start: int
    length: int
    last: int


@dataclass(frozen=True, slots=True)
class CaptureReport:
    """What the start line and `doctor` say about decoding."""

    captured: tuple[int, ...]  # batch sizes replayed as graphs (empty: eager)
    seconds: float = 0.0
    bytes: int = 0
    reason: str = ""  # why eager
    runner: bool = False  # the static buffers without capture (tests, CPU benchmark checks)

    def describe(self) -> str:
        if self.runner:
            return "decode through the static buffers, not captured"
        if not self.captured:
            return f"decode eager ({self.reason})"
        return (f"decode CUDA graphs for batch {','.join(map(str, self.captured))} "
                f"(captured in {self.seconds:.1f} s, graph memory "
                f"{self.bytes / 1024**2:.0f} MiB)")


class CaptureFailed(RuntimeError):
    """The step could not be captured, or its replay did not match the eager step."""


class Graph(Protocol):
    def replay(self) -> None: ...
    def reset(self) -> None: ...


class GraphBackend(Protocol):
    """How steps are captured and replayed: CUDA graphs (`CudaGraphs`), or in tests a backend
    whose "graph" calls the step again."""

    def capture(self, step: Callable[[], torch.Tensor]) -> tuple[Graph, torch.Tensor]:
        """Capture `step`; returns the graph and the static output its replays write."""
        ...

    def new_pool(self) -> None: ...  # the next captures share a fresh memory pool
    def synchronize(self) -> None: ...
    def reserved_bytes(self) -> int: ...


class CudaGraphs:
    """torch.cuda.CUDAGraph, every bucket's graph in one memory pool (largest captured first,
    so the smaller ones fit in what it already holds)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pool: Any = None  # the first graph's memory pool handle

    def capture(self, step: Callable[[], torch.Tensor]) -> tuple[Graph, torch.Tensor]:
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
            output = step()
        if self._pool is None:
            self._pool = graph.pool()
        return graph, output

    def new_pool(self) -> None:
        self._pool = None

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def reserved_bytes(self) -> int:
        return torch.cuda.memory_reserved(self.device)


class DecodeRunner:
    """Static buffers for the largest bucket; bucket b uses their first b entries. With a
    backend the step is captured per bucket and replayed; without, run eagerly over the same
    buffers. `varlen`: attention by flash attention's variable-length kernel reading the
    buffers on the device (capturable); else one SDPA per row from the host staging."""

    def __init__(self, model: GPTNeoXForCausalLM, cache: KVArena, heads: int, head_dim: int,
                 max_batch: int, *, backend: GraphBackend | None, varlen: bool,
                 pad_id: int = 0) -> None:
        self.model, self.cache = model, cache
        self.heads, self.head_dim = heads, head_dim
        self.sizes = buckets(max_batch)
        self.backend, self.varlen = backend, varlen
        self.pad_id = pad_id
        device = cache.device
        self.device = device
        top = self.sizes[-1]
        pinned = device.type == "cuda"
        self._copied = torch.cuda.Event() if pinned else None  # the last upload, done
        # Host staging (pinned on CUDA) and the device buffers, flat: bucket b uses the first
        # 3b longs (ids, positions, slots) and 2b + 1 ints (int32 for flash attention: key
        # starts with one past the end, lengths), each one contiguous piece, one non-blocking
        # upload each; every bucket's graph holds its own fixed views of them (`views`).
        self._host_long = torch.zeros(3 * top, dtype=torch.long, pin_memory=pinned)
        self._host_int = torch.zeros(2 * top + 1, dtype=torch.int32, pin_memory=pinned)
        self.longs = torch.zeros(3 * top, dtype=torch.long, device=device)
        self.ints = torch.zeros(2 * top + 1, dtype=torch.int32, device=device)
        self.cu_q = torch.arange(top + 1, dtype=torch.int32, device=device)
        self.sample_at = torch.arange(top, dtype=torch.long, device=device)
        self.graphs: dict[int, Graph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.captures = 0  # capture_all calls that succeeded (growth recaptures included)
        self._arena_key: tuple[int, ...] | None = None
        self.report = CaptureReport(())
        self.last_bucket = 0  # for tests and benchmarks: the bucket of the latest step

    # ----- filling ---------------------------------------------------------------------
    def fits(self, rows: int) -> bool:
        return bucket_for(rows, self.sizes) is not None

    def fill(self, rows: Sequence[DecodeRow]) -> int:
        """Write the step's inputs (real rows, then padding) into the static buffers; returns
        the bucket. Padding rows write to and read only the scratch slot."""
        bucket = bucket_for(len(rows), self.sizes)
        if bucket is None or not rows:
            raise ValueError(f"{len(rows)} rows: no decode bucket (largest {self.sizes[-1]})")
        self._stage(rows, bucket)
        self.last_bucket = bucket
        return bucket

    def _stage(self, rows: Sequence[DecodeRow], bucket: int) -> None:
        """Rows then padding into the host staging, and one upload of each buffer."""
        scratch = self.cache.scratch_slot
        pad = bucket - len(rows)
        if self._copied is not None:
            self._copied.synchronize()  # the previous upload has read the staging (long ago)
        longs, ints = 3 * bucket, 2 * bucket + 1
        self._host_long[:longs] = torch.tensor(
            [r.last for r in rows] + [self.pad_id] * pad
            + [r.length for r in rows] + [0] * pad
            + [r.start + r.length for r in rows] + [scratch] * pad)
        self._host_int[:ints] = torch.tensor(
            [r.start for r in rows] + [scratch] * pad + [self.cache.capacity]
            + [r.length + 1 for r in rows] + [1] * pad, dtype=torch.int32)
        self.longs[:longs].copy_(self._host_long[:longs], non_blocking=True)
        self.ints[:ints].copy_(self._host_int[:ints], non_blocking=True)
        if self._copied is not None:
            self._copied.record()

    def views(self, bucket: int, host: bool = False) -> tuple[torch.Tensor, ...]:
        """Bucket `bucket`'s ids, positions, slots, key starts (b + 1) and key lengths: views of
        the device buffers (or of the host staging), the same ones at every call."""
        longs, ints = (self._host_long, self._host_int) if host else (self.longs, self.ints)
        b = bucket
        return (longs[:b], longs[b:2 * b], longs[2 * b:3 * b], ints[:b + 1],
                ints[b + 1:2 * b + 1])

    def plan(self, bucket: int) -> StepPlan:
        """The step over bucket `bucket`'s views. With flash attention (capture) everything is
        on the device; the per-row path reads the rows from the host staging instead (it runs
        eagerly, so that costs nothing it would not already)."""
        _, positions, slots, starts_k, used_k = self.views(bucket)
        sample_at = self.sample_at[:bucket]
        if self.varlen:
            varlen = Varlen(self.cu_q[:bucket + 1], starts_k, used_k, 1, self.cache.capacity)
            return StepPlan((), positions.unsqueeze(0), slots, sample_at, tuple(range(bucket)),
                            {}, varlen)
        _, _, _, host_starts, host_used = self.views(bucket, host=True)
        starts, used = host_starts.tolist(), host_used.tolist()
        segments = tuple(Segment(i, i, used[i] - 1, 1, starts[i]) for i in range(bucket))
        return StepPlan(segments, positions.unsqueeze(0), slots, sample_at, tuple(range(bucket)),
                        {})

    @torch.inference_mode()
    def eager(self, bucket: int) -> torch.Tensor:
        """The step function itself over the filled buffers: float32 logits, [bucket, vocab]."""
        return self._step(bucket)

    def _step(self, bucket: int) -> torch.Tensor:
        return packed_forward(self.model, self.views(bucket)[0].unsqueeze(0), self.plan(bucket),
                              self.cache, self.heads, self.head_dim)

    # ----- running ---------------------------------------------------------------------
    def run(self, rows: Sequence[DecodeRow]) -> torch.Tensor:
        """Logits of the real rows ([len(rows), vocab]) after one decode step."""
        bucket = self.fill(rows)
        if self.backend is None:
            return self.eager(bucket)[:len(rows)]
        if self._arena_key != self._key():
            self.capture_all()  # the arena moved: the graphs point at the old tensors
            bucket = self.fill(rows)  # capture overwrote the buffers with padding
        self.graphs[bucket].replay()
        return self.outputs[bucket][:len(rows)]

    def _key(self) -> tuple[int, ...]:
        """Where every layer's keys and values are: a graph replays over exactly these."""
        return (self.cache.capacity,
                *(t.data_ptr() for t in self.cache.keys + self.cache.values))

    def capture_all(self) -> CaptureReport:
        """Capture every bucket, largest first (one shared memory pool), over the arena as it
        is now; each graph's first replay must equal its eager run bit for bit."""
        assert self.backend is not None
        backend = self.backend
        if not self.cache.keys:
            self.cache.ensure(1, {})  # an arena to capture over (the engine's first size)
        self._drop()
        backend.synchronize()
        reserved = backend.reserved_bytes()
        started = time.monotonic()
        try:
            for bucket in reversed(self.sizes):
                self._capture(backend, bucket)
            backend.synchronize()
        except RuntimeError as exc:  # torch's capture errors (and CaptureFailed) end up here
            self._drop()
            if isinstance(exc, CaptureFailed):
                raise
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise CaptureFailed(f"{type(exc).__name__}: {first}") from exc
        self._arena_key = self._key()
        self.captures += 1
        self.report = CaptureReport(self.sizes, time.monotonic() - started,
                                    backend.reserved_bytes() - reserved)
        log.info("%s", self.report.describe())
        return self.report

    def _drop(self) -> None:
        for graph in self.graphs.values():
            graph.reset()
        self.graphs, self.outputs, self._arena_key = {}, {}, None
        if self.backend is not None:
            self.backend.new_pool()

    def _capture(self, backend: GraphBackend, bucket: int) -> None:
        """Every row padding (the step writes and reads the scratch slot only): the eager run
        (also the warm-up capture needs), the capture, and a replay that must equal it."""
        self._stage([], bucket)
        expected = self.eager(bucket).clone()
        graph, output = backend.capture(lambda: self._step(bucket))
        self._stage([], bucket)
        graph.replay()
        if not torch.equal(output, expected):
            raise CaptureFailed(f"batch {bucket}: the replayed step differs from the eager one")
        self.graphs[bucket], self.outputs[bucket] = graph, output


def build_runner(model: GPTNeoXForCausalLM, cache: KVArena, heads: int, head_dim: int,
                 max_batch: int, mode: str, flash: bool,
                 backend: GraphBackend | None = None) -> tuple[DecodeRunner | None,
                                                               CaptureReport]:
    """The engine's decode runner for `mode` ("auto": graphs on CUDA where they can be
    captured, or through `backend` where one is given; "eager": none, as CUDA_GRAPHS=false;
    "runner": the runner without capture, on any device) and what the start line says about
    it. A capture that fails is said once, here, and decoding stays eager."""
    if mode == "eager":
        return None, CaptureReport((), reason="CUDA_GRAPHS=false")
    if mode == "runner":
        return (DecodeRunner(model, cache, heads, head_dim, max_batch, backend=None,
                             varlen=flash), CaptureReport((), runner=True))
    if backend is None:
        if cache.device.type != "cuda":
            return None, CaptureReport((), reason="CUDA graphs not used on the CPU")
        if not flash:
            return None, CaptureReport((), reason="no flash attention here: nothing to capture")
        backend = CudaGraphs(cache.device)
    if any(type(m).__name__ == "Linear8bitLt" for m in model.modules()):
        return None, CaptureReport((), reason="bitsandbytes 8-bit has no CUDA graphs")
    runner = DecodeRunner(model, cache, heads, head_dim, max_batch, backend=backend,
                          varlen=flash)
    try:
        return runner, runner.capture_all()
    except CaptureFailed as exc:
        log.warning("CUDA graphs could not be captured (%s): decoding eagerly", exc)
        return None, CaptureReport((), reason="capture failed, see the warning above")

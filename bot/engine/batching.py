"""The batch engine: continuous batching over one model, run only by the generator's worker.

Every step is one forward pass over a packed, unpadded sequence: one token for each decoding
row, plus chunks of the prompts still being prefilled, within a per-step token budget. Running
streams therefore never stall for a whole prefill, and prompts that arrive together are not
padded to the longest. Each row's keys and values live in its own span of a preallocated
arena (`bot.engine.kv_cache`), written in place; attention is computed per row over exactly
that row's cached tokens, so no row pays for a longer one. A row that finishes, is cancelled or
times out leaves at once and gives its span back. Each row keeps its own sampling parameters, random
stream, stop filter and deadline, and its prompt is cut into chunks at the same places whatever
else runs, so a row's output is what it would be alone.
A step where every row decodes (no prompt in it) goes through `bot.engine.decode_graphs`: on
CUDA a captured graph for its bucketed batch size, replayed. Steps with a prefill chunk in them run
eagerly as a whole. Inside a step the host never waits for the device except for the sampled
ids: inputs go up through pinned memory, sampling runs there, and the ids come back in one
non-blocking copy into pinned memory.
Not thread-safe by design: one thread owns it (nano-vllm's add_request / step / has_work).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from bot.engine.decode_graphs import (
    CaptureFailed,
    CaptureReport,
    DecodeRow,
    GraphBackend,
    build_runner,
)
from bot.engine.generation import GenerationParams, prompt_room
from bot.engine.kv_cache import KVArena
from bot.engine.neox_forward import (
    Segment,
    StepPlan,
    Varlen,
    flash_attention_works,
    packed_forward,
    to_device,
)
from bot.engine.sampling import sample_ids
from bot.engine.stops import ReplyText
from bot.engine.tokenizer import Tokenizer
from bot.errors import GenerationTimeout, GeneratorError

if TYPE_CHECKING:
    from transformers import GPTNeoXForCausalLM

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_batch: int = 8
    kv_cache_bytes: int = 6 * 1024**3  # KV_CACHE_GB
    context_tokens: int = 2048
    request_timeout_s: float = 180.0
    continuous: bool = True  # False: a new batch starts only when the last one is done
    # Tokens one forward pass may take (every decoding row, then prefill chunks), and the chunk
    # a prompt is prefilled in. None: 2,048 / 512 on CUDA, 512 / 256 on CPU.
    step_tokens: int | None = None
    prefill_chunk: int | None = None
    attention: str = "auto"  # "rows" (one SDPA per row), "flash" (varlen, CUDA), "auto"
    # Decode steps: "auto" (CUDA graphs on CUDA where they capture), "eager" (CUDA_GRAPHS=false),
    # "runner" (the graphs' static buffers and padding without capture, on any device: tests)
    decode: str = "auto"


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    prompt_ids: list[int]
    params: GenerationParams

    @property
    def max_len(self) -> int:
        return len(self.prompt_ids) + self.params.max_new_tokens


@dataclass(frozen=True, slots=True)
class Output:
    """What one step produced for one request: new text, and whether it ended (and how)."""

    request_id: int
    text: str
    finished: bool = False
    error: Exception | None = None


@dataclass(slots=True)
class _Row:
    request: Request
    reply: ReplyText  # decoder, stop filter and eos: shared with the remote engine
    generator: torch.Generator | None
    deadline: float
    start: int = 0  # where the row's span begins in the KV arena
    length: int = 0  # tokens in the cache for this row (prompt tokens prefilled so far, then more)
    last: int = -1  # last sampled token, fed at the next step
    produced: int = 0
    pending_text: list[str] = field(default_factory=list)

    @property
    def prefilling(self) -> bool:
        return self.length < len(self.request.prompt_ids)


class BatchEngine:
    def __init__(
        self,
        model: GPTNeoXForCausalLM,
        tokenizer: Tokenizer,
        config: EngineConfig,
        clock: Callable[[], float] = time.monotonic,
        graphs: GraphBackend | None = None,  # decode="auto": CUDA graphs on CUDA unless given
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.clock = clock
        self.device = next(model.parameters()).device
        cfg = model.config
        self.heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        # activations (and K/V) dtype
        dtype = next(model.get_input_embeddings().parameters()).dtype
        # K and V, every layer, hidden size each: 0.4 MB per token for the real model at fp16.
        self.kv_bytes_per_token = (2 * cfg.num_hidden_layers * cfg.hidden_size
                                   * torch.finfo(dtype).bits // 8)
        budget_tokens = max(1, config.kv_cache_bytes // self.kv_bytes_per_token)
        self.cache = KVArena(cfg.num_hidden_layers, self.heads, self.head_dim, dtype,
                             self.device, budget_tokens)
        self.rows: list[_Row] = []
        self.seen: torch.Tensor | None = None  # [B, V] ids seen, for the repetition penalty
        self.tokens_generated = 0  # for benchmarks and the log
        cuda = self.device.type == "cuda"
        self.step_tokens = config.step_tokens or (2048 if cuda else 512)
        self.prefill_chunk = config.prefill_chunk or (512 if cuda else 256)
        # On CUDA, one flash-attention kernel per layer for every row (variable lengths read
        # straight from the arena), if this torch has it and it agrees with the per-row path.
        self.flash = config.attention != "rows" and flash_attention_works(
            self.device, dtype, self.heads, self.head_dim)
        if config.attention == "flash" and not self.flash:
            raise GeneratorError("ENGINE attention=flash: flash attention is not available here")
        self.decode, self.decode_report = build_runner(
            model, self.cache, self.heads, self.head_dim, config.max_batch, config.decode,
            self.flash, graphs)
        self._ids_host = (torch.zeros(config.max_batch, dtype=torch.long, pin_memory=True)
                          if cuda else None)
        self._ids_ready = torch.cuda.Event() if cuda else None

    # ----- admission -------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.rows)

    def check(self, request: Request) -> None:
        """Raise if the request can never run (prompt too long for the context)."""
        prompt_room(len(request.prompt_ids), self.config.context_tokens)

    def clamp(self, request: Request) -> Request:
        """Prompt plus reply must fit the context: shorten the reply's limit if needed."""
        room = self.config.context_tokens - len(request.prompt_ids)
        if request.params.max_new_tokens <= room:
            return request
        return replace(request, params=replace(request.params, max_new_tokens=room))

    def can_admit(self, requests: list[Request], incoming: Request) -> bool:
        """Whether `incoming` fits beside the running rows and `requests` already admitted.

        Each row reserves exactly its own prompt + max_new_tokens in the KV arena, so the budget
        is the sum of the rows' real needs, not the batch size times the longest row."""
        if self.rows and not self.config.continuous:
            return False
        batch = [r.request for r in self.rows] + [self.clamp(r) for r in requests + [incoming]]
        if len(batch) > self.config.max_batch:
            return False
        if len(batch) == 1:
            return True  # one request always runs, whatever the budget says
        return sum(r.max_len for r in batch) * self.kv_bytes_per_token <= self.config.kv_cache_bytes

    # ----- the step --------------------------------------------------------------------
    def add_requests(self, requests: list[Request]) -> None:
        """Join `requests` to the batch; their prompts are prefilled, chunk by chunk, by the
        steps that follow (interleaved with the running rows' decoding)."""
        if not requests:
            return
        rows = [self._new_row(self.clamp(r)) for r in requests]
        filled = {r.request.id: r.length for r in self.rows}
        self.cache.ensure(self.cache.reserved + sum(r.request.max_len for r in rows), filled)
        for row in rows:
            row.start = self.cache.allocate(row.request.id, row.request.max_len, filled)
            filled[row.request.id] = 0
        if any(self.cache.start(r.request.id) != r.start for r in self.rows):
            for row in self.rows:  # a growth or compaction moved the running rows' spans
                row.start = self.cache.start(row.request.id)
        seen = torch.zeros(len(rows), self._vocab(), dtype=torch.bool, device=self.device)
        for i, row in enumerate(rows):
            seen[i, to_device(row.request.prompt_ids, self.device, torch.long)] = True
        self.seen = seen if self.seen is None else torch.cat([self.seen, seen])
        self.rows = self.rows + rows

    def step(self) -> list[Output]:
        """One forward pass: a token for every decoding row, and prefill chunks within budget."""
        if not self.rows:
            return []
        if self.decode is not None and not any(r.prefilling for r in self.rows):
            logits = self._decode()
            if logits is not None:
                for row in self.rows:
                    row.length += 1
                return self._sample(logits, list(range(len(self.rows))))
        plan = self.plan()
        logits = self._forward(self._packed_ids(plan), plan, self.cache)
        for segment in plan.segments:
            self.rows[segment.row].length += segment.count
        return self._sample(logits, list(plan.sample_rows))

    def expire(self) -> list[Output]:
        """End the rows past their deadline (GenerationTimeout), before the next step."""
        now = self.clock()
        expired = [r for r in self.rows if now >= r.deadline]
        if not expired:
            return []
        self._keep([i for i, r in enumerate(self.rows) if now < r.deadline])
        return [Output(r.request.id, r.reply.finish(), True, GenerationTimeout("timed out"))
                for r in expired]

    def abort(self, request_id: int) -> bool:
        keep = [i for i, r in enumerate(self.rows) if r.request.id != request_id]
        if len(keep) == len(self.rows):
            return False
        self._keep(keep)
        return True

    def fail_all(self, error: Exception) -> list[Output]:
        """After a failed forward pass: end every row with `error` and start clean."""
        outputs = [Output(r.request.id, "", True, error) for r in self.rows]
        self._keep([])
        self.cache.clear(release=True)  # e.g. after running out of memory: give it back
        return outputs

    def _decode(self) -> torch.Tensor | None:
        """The all-decode step through the runner (a replayed graph on CUDA); None: run it
        eagerly (too many rows for a bucket, or graphs that could not be captured again after
        the arena moved: said once, then eager from here on)."""
        assert self.decode is not None
        if not self.decode.fits(len(self.rows)):
            return None
        try:
            with torch.inference_mode():
                return self.decode.run([DecodeRow(r.start, r.length, r.last) for r in self.rows])
        except CaptureFailed as exc:
            log.warning("CUDA graphs could not be captured again (%s): decoding eagerly", exc)
            self.decode, self.decode_report = None, CaptureReport((), reason="capture failed")
            return None

    # ----- planning --------------------------------------------------------------------
    def plan(self) -> StepPlan:
        """Every decoding row's next token, then prefill chunks (oldest row first) while the
        step's token budget lasts; at least one chunk per step, so a prompt always advances.
        Chunks are cut at multiples of `prefill_chunk` of the row's own prompt."""
        segments: list[Segment] = []
        packed = 0
        for i, row in enumerate(self.rows):
            if not row.prefilling:
                segments.append(Segment(i, packed, row.length, 1, row.start))
                packed += 1
        budget = self.step_tokens - packed
        chunk = self.prefill_chunk
        prefilled = False
        for i, row in enumerate(self.rows):
            if not row.prefilling:
                continue
            prompt = len(row.request.prompt_ids)
            count = min(chunk - row.length % chunk, prompt - row.length)
            if prefilled and count > budget:
                break
            segments.append(Segment(i, packed, row.length, count, row.start))
            packed += count
            budget -= count
            prefilled = True
        positions = torch.cat([torch.arange(s.offset, s.offset + s.count) for s in segments])
        slots = torch.cat([torch.arange(s.start + s.offset, s.start + s.offset + s.count)
                           for s in segments])
        ends = [s for s in segments
                if s.offset + s.count >= len(self.rows[s.row].request.prompt_ids)]
        ends.sort(key=lambda s: s.row)
        varlen, masks = None, {}
        if self.flash:
            cu_q = [s.packed for s in segments] + [packed]
            starts = [s.start for s in segments] + [self.cache.capacity]
            used = [s.offset + s.count for s in segments]
            cu_q_t, starts_t, used_t = (to_device(v, self.device, torch.int32)
                                        for v in (cu_q, starts, used))
            varlen = Varlen(cu_q_t, starts_t, used_t, max(s.count for s in segments), max(used))
        else:
            for index, s in enumerate(segments):
                if s.count > 1 and s.offset > 0:  # a later chunk: the earlier ones, own past
                    masks[index] = to_device(torch.arange(s.offset + s.count) <= torch.arange(
                        s.offset, s.offset + s.count).unsqueeze(1), self.device)
        return StepPlan(tuple(segments), to_device(positions.unsqueeze(0), self.device),
                        to_device(slots, self.device),
                        to_device([s.packed + s.count - 1 for s in ends], self.device,
                                  torch.long),
                        tuple(s.row for s in ends), masks, varlen)

    def _packed_ids(self, plan: StepPlan) -> torch.Tensor:
        ids: list[int] = []
        for s in plan.segments:
            row = self.rows[s.row]
            if row.prefilling:
                ids.extend(row.request.prompt_ids[s.offset:s.offset + s.count])
            else:
                ids.append(row.last)
        return to_device([ids], self.device, torch.long)

    # ----- internals -------------------------------------------------------------------
    def _vocab(self) -> int:
        return self.model.config.vocab_size

    def _new_row(self, request: Request) -> _Row:
        generator = None
        if request.params.do_sample:
            generator = torch.Generator(device=self.device)
            seed = request.params.seed
            generator.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        timeout = request.params.timeout_s or self.config.request_timeout_s
        text = ReplyText(self.tokenizer.decoder(), self.tokenizer.eos_id, self.tokenizer)
        return _Row(request, text, generator, self.clock() + timeout)

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, plan: StepPlan, cache: KVArena) -> torch.Tensor:
        """GPT-NeoX over the packed step (the model's own modules, our cache and attention):
        returns float32 logits for `plan.sample_at`, in that order."""
        return packed_forward(self.model, ids, plan, cache, self.heads, self.head_dim)

    def _sample(self, logits: torch.Tensor, indices: list[int]) -> list[Output]:
        if not indices:
            return []
        assert self.seen is not None
        rows = [self.rows[i] for i in indices]
        index = to_device(indices, self.device, torch.long)
        ids = sample_ids(logits, self.seen.index_select(0, index),
                         [r.request.params for r in rows], [r.generator for r in rows])
        self.seen[index, ids] = True
        tokens = self._to_host(ids)
        outputs, done_rows = [], set()
        for i, row, token in zip(indices, rows, tokens, strict=True):
            row.last, row.produced = token, row.produced + 1
            self.tokens_generated += 1
            text = row.reply.feed(token)
            done = row.reply.ended or row.produced >= row.request.params.max_new_tokens
            if done:
                text += row.reply.finish()
                done_rows.add(i)
            if text or done:
                outputs.append(Output(row.request.id, text, done))
        if done_rows:
            self._keep([i for i in range(len(self.rows)) if i not in done_rows])
        return outputs

    def _to_host(self, ids: torch.Tensor) -> list[int]:
        """The step's one wait on the device: the sampled ids, one non-blocking copy into
        pinned memory (on CUDA), then the host reads them."""
        if (self._ids_host is None or self._ids_ready is None
                or ids.shape[0] > self._ids_host.shape[0]):
            return ids.tolist()
        host = self._ids_host[:ids.shape[0]]
        host.copy_(ids, non_blocking=True)
        self._ids_ready.record()
        self._ids_ready.synchronize()
        return host.tolist()

    def _keep(self, indices: list[int]) -> None:
        """Keep only these rows; the others give their arena spans back (no data moves)."""
        kept = set(indices)
        for i, row in enumerate(self.rows):
            if i not in kept:
                self.cache.free(row.request.id)
        if not indices:
            self.rows, self.seen = [], None
            self.cache.clear()
            return
        assert self.seen is not None
        self.rows = [self.rows[i] for i in indices]
        if len(indices) < self.seen.shape[0]:
            self.seen = self.seen.index_select(0, to_device(indices, self.device, torch.long))

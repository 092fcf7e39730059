"""The batch engine: continuous batching over one model, run only by the generator's worker.

Rows share one left-padded KV cache. New requests are prefilled together and join the running
batch at the next step boundary; finished, cancelled or timed-out rows leave at once and the
padding columns no row needs any more are trimmed. Each row keeps its own sampling parameters,
random stream, stop filter and deadline, so a row's output is what it would be alone.
Not thread-safe by design: one thread owns it (nano-vllm's add_request / step / has_work).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from transformers import DynamicCache

from bot.errors import GenerationTimeout, GeneratorError
from bot.sampling import GenerationParams, next_tokens
from bot.stops import StopFilter
from bot.tokenizer import IncrementalDecoder, Tokenizer


@dataclass(frozen=True, slots=True)
class EngineConfig:
    max_batch: int = 8
    kv_cache_bytes: int = 6 * 1024**3  # KV_CACHE_GB
    context_tokens: int = 2048
    request_timeout_s: float = 180.0
    continuous: bool = True  # False: a new batch starts only when the last one is done


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
    decoder: IncrementalDecoder
    stop: StopFilter
    generator: torch.Generator | None
    deadline: float
    length: int  # real tokens in the cache for this row
    last: int = -1  # last sampled token, fed at the next step
    produced: int = 0
    pending_text: list[str] = field(default_factory=list)


class BatchEngine:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        config: EngineConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.clock = clock
        self.device = next(model.parameters()).device
        cfg = model.config
        dtype_bytes = torch.finfo(getattr(model, "dtype", torch.float32)).bits // 8
        # K and V, every layer, hidden size each: 0.4 MB per token for the real model at fp16.
        self.kv_bytes_per_token = 2 * cfg.num_hidden_layers * cfg.hidden_size * dtype_bytes
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, T] 1 for real tokens, 0 for left padding
        self.seen: torch.Tensor | None = None  # [B, V] ids seen, for the repetition penalty
        self.tokens_generated = 0  # for benchmarks and the log

    # ----- admission -------------------------------------------------------------------
    def has_work(self) -> bool:
        return bool(self.rows)

    def check(self, request: Request) -> None:
        """Raise if the request can never run (prompt too long for the context)."""
        if not request.prompt_ids:
            raise GeneratorError("empty prompt")
        if len(request.prompt_ids) >= self.config.context_tokens:
            raise GeneratorError(
                f"prompt of {len(request.prompt_ids)} tokens does not fit the "
                f"{self.config.context_tokens}-token context"
            )

    def clamp(self, request: Request) -> Request:
        """Prompt plus reply must fit the context: shorten the reply's limit if needed."""
        room = self.config.context_tokens - len(request.prompt_ids)
        if request.params.max_new_tokens <= room:
            return request
        return replace(request, params=replace(request.params, max_new_tokens=room))

    def can_admit(self, requests: list[Request], incoming: Request) -> bool:
        """Whether `incoming` fits beside the running rows and `requests` already admitted."""
        if self.rows and not self.config.continuous:
            return False
        batch = [r.request for r in self.rows] + requests + [incoming]
        if len(batch) > self.config.max_batch:
            return False
        if len(batch) == 1:
            return True  # one request always runs, whatever the budget says
        width = max(r.max_len for r in batch)  # after trimming, the cache is this wide at most
        return len(batch) * width * self.kv_bytes_per_token <= self.config.kv_cache_bytes

    # ----- the step --------------------------------------------------------------------
    def add_requests(self, requests: list[Request]) -> list[Output]:
        """Prefill `requests` together and join them to the running batch."""
        if not requests:
            return []
        rows = [self._new_row(self.clamp(r)) for r in requests]
        width = max(len(r.prompt_ids) for r in requests)
        pad = self.tokenizer.pad_id
        ids = torch.tensor(
            [[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in requests],
            device=self.device,
        )
        mask = (torch.arange(width, device=self.device) >= (width - torch.tensor(
            [len(r.prompt_ids) for r in requests], device=self.device)).unsqueeze(1)).long()
        seen = torch.zeros(len(rows), self._vocab(), dtype=torch.bool, device=self.device)
        seen.scatter_(1, ids, mask.bool())
        cache = DynamicCache()
        logits = self._forward(ids, mask, cache)
        self._join(rows, cache, mask, seen)
        return self._sample(logits, first_row=len(self.rows) - len(rows))

    def step(self) -> list[Output]:
        """One decode step for every running row."""
        if not self.rows:
            return []
        assert self.cache is not None and self.mask is not None
        ids = torch.tensor([[r.last] for r in self.rows], device=self.device)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], dim=1)
        logits = self._forward(ids, self.mask, self.cache)
        return self._sample(logits, first_row=0)

    def expire(self) -> list[Output]:
        """End the rows past their deadline (GenerationTimeout), before the next step."""
        now = self.clock()
        expired = [r for r in self.rows if now >= r.deadline]
        if not expired:
            return []
        self._keep([i for i, r in enumerate(self.rows) if now < r.deadline])
        return [Output(r.request.id, r.stop.flush(), True, GenerationTimeout("timed out"))
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
        return outputs

    # ----- internals -------------------------------------------------------------------
    def _vocab(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]

    def _new_row(self, request: Request) -> _Row:
        generator = None
        if request.params.do_sample:
            generator = torch.Generator(device=self.device)
            seed = request.params.seed
            generator.manual_seed(seed if seed is not None else int(torch.seed() % 2**63))
        timeout = request.params.timeout_s or self.config.request_timeout_s
        return _Row(request, self.tokenizer.decoder(), StopFilter(), generator,
                    self.clock() + timeout, len(request.prompt_ids))

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                         cache=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def _join(self, rows: list[_Row], cache: DynamicCache, mask: torch.Tensor,
              seen: torch.Tensor) -> None:
        if self.cache is None or not self.rows:
            self.rows, self.cache, self.mask, self.seen = rows, cache, mask, seen
            return
        assert self.mask is not None and self.seen is not None
        width = max(self.mask.shape[1], mask.shape[1])
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_left_pad(old.keys, width, 2), _left_pad(new.keys, width, 2)])
            old.values = torch.cat([_left_pad(old.values, width, 2),
                                    _left_pad(new.values, width, 2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.seen = torch.cat([self.seen, seen])
        self.rows = self.rows + rows

    def _keep(self, indices: list[int]) -> None:
        """Keep only these rows, then drop leading columns that are padding in every row."""
        if not indices:
            self.rows, self.cache, self.mask, self.seen = [], None, None, None
            return
        assert self.cache is not None and self.mask is not None and self.seen is not None
        index = torch.tensor(indices, device=self.device)
        self.rows = [self.rows[i] for i in indices]
        mask = self.mask.index_select(0, index)
        start = int((mask.sum(dim=0) > 0).nonzero()[0])
        self.mask = mask[:, start:]
        self.seen = self.seen.index_select(0, index)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]

    def _sample(self, logits: torch.Tensor, first_row: int) -> list[Output]:
        assert self.seen is not None
        rows = self.rows[first_row:]
        tokens = next_tokens(logits, self.seen[first_row:], [r.request.params for r in rows],
                             [r.generator for r in rows])
        outputs, keep = [], list(range(first_row))
        for offset, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            index = first_row + offset
            self.seen[index, token] = True
            row.last, row.produced = token, row.produced + 1
            self.tokens_generated += 1
            row.length += 1
            eos = token == self.tokenizer.eos_id
            text = "" if eos else row.stop.push(row.decoder.feed(token))
            done = eos or row.stop.stopped or row.produced >= row.request.params.max_new_tokens
            if done:
                text += row.stop.push(row.decoder.flush()) + row.stop.flush(truncated=not eos)
            else:
                keep.append(index)
            if text or done:
                outputs.append(Output(row.request.id, text, done))
        if len(keep) < len(self.rows):
            self._keep(keep)
        return outputs


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

"""Values of generation shared by the core and the engine. Torch-free: importing the core
(chat service, generator bridge, command line) must not pay for importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """The model card's sampling: do_sample, temperature 0.7, repetition penalty 1.1,
    128 new tokens (and generate()'s default top_k of 50)."""

    max_new_tokens: int = 128
    temperature: float = 0.7
    repetition_penalty: float = 1.1
    top_k: int = 50
    do_sample: bool = True
    seed: int | None = None
    timeout_s: float | None = None  # None: the generator's REQUEST_TIMEOUT_S

    @classmethod
    def from_settings(cls, settings: Any) -> GenerationParams:
        """MAX_NEW_TOKENS, TEMPERATURE and REPETITION_PENALTY: every engine's defaults."""
        return cls(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                   repetition_penalty=settings.repetition_penalty)


@dataclass(frozen=True, slots=True)
class GeneratorStats:
    """A snapshot of the shared generator, for metrics and logs."""

    waiting: int  # requests queued, not yet in the batch
    running: int  # rows decoding now
    generated_tokens: int  # tokens sampled since start
    background: int = 0  # background requests (summaries) waiting or running

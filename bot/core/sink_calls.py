"""Calling a reply sink's optional capabilities (bot/ports/sinks.py), each checked with
isinstance: a sink without one is simply not asked."""

from __future__ import annotations

import logging

from bot.conversation import Controls, ReplySink
from bot.ports.sinks import (NamesPlaceholder, OffersControls, Resumes, RetiresAnswers,
                             SupersedesAnswers)

log = logging.getLogger(__name__)


def placeholder_ref(sink: ReplySink) -> str | None:
    """The platform handle of the sink's placeholder, for sinks that can say."""
    return sink.placeholder_ref() if isinstance(sink, NamesPlaceholder) else None


def offer(sink: ReplySink, controls: Controls) -> None:
    """Tell a sink with buttons which ones to show next."""
    if isinstance(sink, OffersControls):
        sink.offer(controls)


async def retire(sink: ReplySink, ref: str) -> None:
    """An earlier answer's message loses 「もう一度」; a failure only costs that button."""
    if not isinstance(sink, RetiresAnswers):
        return
    try:
        await sink.retire(ref)
    except Exception as exc:  # cosmetic: the answer itself is not affected
        log.warning("could not update the buttons of an earlier answer: %s",
                    type(exc).__name__)


async def resume(sink: ReplySink, ref: str | None) -> None:
    if isinstance(sink, Resumes):
        await sink.resume(ref)


async def supersede(sink: ReplySink, ref: str, text: str, notice: str) -> None:
    """Mark an earlier answer's message as superseded; a failure only costs the mark."""
    if not isinstance(sink, SupersedesAnswers):
        return
    try:
        await sink.supersede(ref, text, notice)
    except Exception as exc:  # cosmetic: the new answer is what matters
        log.warning("could not mark an earlier answer as superseded: %s", type(exc).__name__)

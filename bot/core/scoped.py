"""What the chat service takes from a conversation's community settings (bot/core/community.py):
whether it answers there at all, the persona at the prompt's head, the sampling, the prompt
budget, and which buttons its answers show. Without community settings (tests, the console)
every conversation has the host's behaviour from ChatConfig, as before."""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.community import Community
from bot.conversation import NO_CONTROLS, ConversationKey, Controls, Turn
from bot.engine.generation import GenerationParams


@dataclass(frozen=True, slots=True)
class AnswerShape:
    """How one answer is made in its scope."""

    params: GenerationParams | None  # None: the generator's defaults
    budget: int  # prompt tokens
    persona: tuple[Turn, ...] = ()
    buttons: bool = True


class ScopedSettings:
    def __init__(self, community: Community | None, params: GenerationParams | None,
                 budget: int) -> None:
        self.community = community
        self._params = params
        self._budget = budget

    async def takes(self, key: ConversationKey, addressed: bool) -> bool:
        """Whether a message here is for the bot: the scope is on, and the bot is mentioned
        (or is followed in every message of a thread where mention_only is off)."""
        if self.community is None:
            return True
        settings = await self.community.effective(key)
        return settings.enabled and (addressed or not settings.mention_only)

    async def shape(self, key: ConversationKey) -> AnswerShape:
        if self.community is None:
            return AnswerShape(self._params, self._budget)
        settings = await self.community.effective(key)
        return AnswerShape(settings.params(self._params),
                           min(settings.prompt_budget, self._budget),
                           settings.persona.turns, settings.buttons)

    async def buttons(self, key: ConversationKey) -> bool:
        """Whether answers here show 停止 / もう一度 / 👍👎."""
        return self.community is None or (await self.community.effective(key)).buttons

    async def controls(self, key: ConversationKey, wanted: Controls) -> Controls:
        """`wanted`, or none where the scope hides the buttons."""
        return wanted if await self.buttons(key) else NO_CONTROLS

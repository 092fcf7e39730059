"""Buttons on Discord answers (停止 / もう一度 / 👍 / 👎).

Two kinds of views, on purpose:
- `controls_view(controls)` renders the buttons a message should show. It is a stopped view,
  so discord.py does not keep one object per posted message (they would pile up forever).
- `ControlsView` is the one persistent view (timeout None, stable custom_ids) registered with
  `bot.add_view` in `setup_hook`: it receives every press on every answer, also on messages
  posted before a restart, and hands it to `AnswerControls`, which finds the answer from the
  message the button is on (its reply_ref "channel_id/message_id") and asks the chat service.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import aiohttp
import discord

from bot.core.answer_controls import ModeratorCheck
from bot.core.controls import ControlResult, control_message
from bot.conversation import NO_CONTROLS, ConversationKey, Controls
from bot.errors import RinnaError
from bot.core.front_door import FrontDoor

log = logging.getLogger(__name__)

PLATFORM = "discord"
STOP_ID = "rinna_stop"
REGENERATE_ID = "rinna_regenerate"
GOOD_ID = "rinna_feedback:good"
BAD_ID = "rinna_feedback:bad"
STOP_LABEL = "停止"
REGENERATE_LABEL = "もう一度"
GOOD_LABEL = "👍"
BAD_LABEL = "👎"
_ERRORS: tuple[type[BaseException], ...] = (discord.HTTPException, aiohttp.ClientError,
                                            TimeoutError)


def _button(label: str, custom_id: str, style: discord.ButtonStyle) -> discord.ui.Button[Any]:
    return discord.ui.Button(label=label, custom_id=custom_id, style=style)


def controls_view(controls: Controls) -> discord.ui.View | None:
    """The buttons for `controls` (None: no buttons). Render-only: presses reach ControlsView."""
    if controls == NO_CONTROLS:
        return None
    view = discord.ui.View(timeout=None)
    if controls.stop:
        view.add_item(_button(STOP_LABEL, STOP_ID, discord.ButtonStyle.danger))
    if controls.regenerate:
        view.add_item(_button(REGENERATE_LABEL, REGENERATE_ID, discord.ButtonStyle.secondary))
    if controls.feedback:
        view.add_item(_button(GOOD_LABEL, GOOD_ID, discord.ButtonStyle.secondary))
        view.add_item(_button(BAD_LABEL, BAD_ID, discord.ButtonStyle.secondary))
    view.stop()  # a finished view is sent as components but not stored by discord.py
    return view


def message_ref(message: Any) -> str | None:
    """A message (or partial message) as the reply_ref the chat service stores for the bot's
    messages: "channel id/message id" (None: not a Discord message)."""
    ident = getattr(message, "id", None)
    channel_id = getattr(getattr(message, "channel", None), "id", None)
    if isinstance(ident, int) and isinstance(channel_id, int):
        return f"{channel_id}/{ident}"
    return None


class ControlHost(Protocol):
    """What the controls need from the bot (RinnaDiscordBot), without importing it."""

    front: FrontDoor

    async def refuse(self, interaction: discord.Interaction) -> bool: ...

    def reply_in(self, key: ConversationKey, tag: str) -> Any: ...


class AnswerControls:
    """What a press does. Every handler answers the interaction within Discord's 3 s."""

    def __init__(self, host: ControlHost) -> None:
        self.host = host

    async def stop(self, interaction: discord.Interaction) -> None:
        await self._guarded("stop", interaction, self._stop)

    async def regenerate(self, interaction: discord.Interaction) -> None:
        await self._guarded("regenerate", interaction, self._regenerate)

    async def feedback(self, interaction: discord.Interaction, value: str) -> None:
        async def run(interaction: discord.Interaction, ref: str) -> None:
            await self._feedback(interaction, ref, value)
        await self._guarded("feedback", interaction, run)

    async def _guarded(self, action: str, interaction: discord.Interaction, run: Any) -> None:
        """The error boundary of a press: the access policy first, then the action; failures
        are logged and the person gets the generic line (ephemeral)."""
        try:
            if await self.host.refuse(interaction):
                return
            ref = message_ref(interaction.message)
            if ref is None:
                await _tell(interaction, control_message(action, ControlResult.NOT_FOUND))
                return
            await run(interaction, ref)
        except _ERRORS as exc:
            log.warning("%s %s: Discord error: %s", action, interaction.id, exc, exc_info=exc)
        except Exception:  # the platform's error boundary: logged, the client keeps running
            log.exception("%s %s: could not handle the press", action, interaction.id)
            try:
                await _tell(interaction, RinnaError.user_message)
            except _ERRORS:
                pass

    @staticmethod
    def _moderator(interaction: discord.Interaction) -> ModeratorCheck:
        """How the core asks whether the presser moderates: Manage Messages where pressed."""
        async def check() -> bool:
            return bool(interaction.permissions.manage_messages)
        return check

    async def _stop(self, interaction: discord.Interaction, ref: str) -> None:
        result = await self.host.front.controls.stop(PLATFORM, ref, str(interaction.user.id),
                                           moderator=self._moderator(interaction))
        if result is ControlResult.DONE:
            # The answering task ends the message itself (「（停止しました）」 + its buttons).
            await interaction.response.defer()
            return
        await _tell(interaction, control_message("stop", result))

    async def _regenerate(self, interaction: discord.Interaction, ref: str) -> None:
        # Long-running (streams a whole answer): acknowledged first, refusals as follow-ups.
        await interaction.response.defer()
        answer = await self.host.front.controls.answer_at(PLATFORM, ref)
        if answer is None:
            await _tell(interaction, control_message("regenerate", ControlResult.NOT_FOUND))
            return
        # Into the conversation: its thread (an /ask answer sits in the channel, its
        # conversation in the thread opened on it), else its channel or DM.
        sink = self.host.reply_in(answer.key, str(interaction.id))
        try:
            result = await self.host.front.controls.regenerate(
                PLATFORM, ref, str(interaction.id), str(interaction.user.id), sink,
                moderator=self._moderator(interaction))
        finally:
            stop_typing = getattr(sink, "stop_typing", None)
            if stop_typing is not None:
                stop_typing()
        if result is not ControlResult.DONE:
            await _tell(interaction, control_message("regenerate", result))

    async def _feedback(self, interaction: discord.Interaction, ref: str, value: str) -> None:
        result = await self.host.front.controls.feedback(
            PLATFORM, ref, str(interaction.user.id), value)
        await _tell(interaction, control_message("feedback", result))


async def _tell(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral line to the person who pressed (a follow-up once acknowledged)."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)


class ControlsView(discord.ui.View):
    """The persistent receiver of every answer button (registered once in setup_hook)."""

    def __init__(self, controls: AnswerControls) -> None:
        super().__init__(timeout=None)
        self.controls = controls

    @discord.ui.button(label=STOP_LABEL, custom_id=STOP_ID, style=discord.ButtonStyle.danger)
    async def stop_pressed(self, interaction: discord.Interaction,
                           _button: discord.ui.Button[Any]) -> None:
        await self.controls.stop(interaction)

    @discord.ui.button(label=REGENERATE_LABEL, custom_id=REGENERATE_ID,
                       style=discord.ButtonStyle.secondary)
    async def regenerate_pressed(self, interaction: discord.Interaction,
                                 _button: discord.ui.Button[Any]) -> None:
        await self.controls.regenerate(interaction)

    @discord.ui.button(label=GOOD_LABEL, custom_id=GOOD_ID, style=discord.ButtonStyle.secondary)
    async def good_pressed(self, interaction: discord.Interaction,
                           _button: discord.ui.Button[Any]) -> None:
        await self.controls.feedback(interaction, "good")

    @discord.ui.button(label=BAD_LABEL, custom_id=BAD_ID, style=discord.ButtonStyle.secondary)
    async def bad_pressed(self, interaction: discord.Interaction,
                          _button: discord.ui.Button[Any]) -> None:
        await self.controls.feedback(interaction, "bad")

"""Slack's settings commands and the app's Home tab: `/rinna config [workspace|channel] …`
for the workspace or the channel, `@rinna 設定 …` in a thread for that thread (Slack runs no
slash command in a thread), and on `app_home_opened` a Home view (views.publish) with the
settings of what the viewer may change, and nothing of the rest.

Who the person is comes from users.info when the command runs (workspace admin or owner; their
home team, so a Slack Connect guest from another organisation is never an admin here); the
rule itself is bot/core/privilege.py's. Every answer goes to that person alone (ephemeral)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from adapters.slack_api import PLATFORM, SlackApi
from adapters.slack_events import SlackMessage
from adapters.slack_text import escape
from bot.conversation import ConversationKey
from bot.core.front_door import FrontDoor
from bot.core.front_events import Ack, Command, Event
from bot.ports.community import Level
from bot.core.privilege import Member

log = logging.getLogger(__name__)

HOME = "home"  # an outcome: a Home tab published
DISABLED = "このボットでは設定の変更が有効になっていません。"
HOME_ADMIN = "*rinna の設定*（変更: `/rinna config`、スレッドでは `@rinna 設定`）"
HOME_MEMBER = ("rinna の設定を変更できるのは、このワークスペースの管理者だけです。"
               "使い方は `/rinna help` で表示できます。")


async def slack_member(api: SlackApi, user: str, team: str) -> Member:
    """The person as the privilege rule needs them, from users.info now (a failed lookup: a
    person with no rights)."""
    try:
        info = await api.call("users_info", user=user)
    except Exception as exc:  # no rights is the safe answer; the person is told so
        log.warning("slack users.info %s for a settings command failed: %s", user,
                    type(exc).__name__)
        return Member(PLATFORM, user, team)
    profile: Mapping[str, Any] = info.get("user") or {}
    manages = bool(profile.get("is_admin") or profile.get("is_owner")
                   or profile.get("is_primary_owner"))
    return Member(PLATFORM, user, team, manages_workspace=manages,
                  home_workspace=str(profile.get("team_id") or ""))


class EphemeralInThread:
    """A config command's answer in a thread, shown to the person alone (chat.postEphemeral;
    Slack shows no slash command's answer inside a thread)."""

    def __init__(self, api: SlackApi, channel: str, user: str, thread_ts: str) -> None:
        self.api, self.channel, self.user, self.thread_ts = api, channel, user, thread_ts

    async def start(self) -> None:
        return None

    async def waiting(self, position: int) -> None:
        return None

    async def update(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        await self.api.call("chat_postEphemeral", channel=self.channel, user=self.user,
                            text=escape(text), thread_ts=self.thread_ts or None)

    async def fail(self, message: str) -> None:
        await self.finish(message)


async def config_in_thread(front: FrontDoor, api: SlackApi, text: str,
                           message: SlackMessage, accepted: Ack | None) -> str:
    """`@rinna 設定 …` in a thread (for that thread; in a channel, for the channel), through
    the front door; answered in the thread to the person alone."""
    key = ConversationKey(PLATFORM, message.team, message.channel, message.thread_ts)
    return await front.receive(Event(
        key, message.delivery_key, text,
        EphemeralInThread(api, message.channel, message.user, message.thread_ts),
        writer=message.user, command=Command.CONFIG,
        member=await slack_member(api, message.user, message.team), accepted=accepted,
        admitted=True))


async def home_view(front: FrontDoor, api: SlackApi, user: str, team: str) -> dict[str, Any]:
    """The Home tab for `user`: for an admin, the workspace's settings and those of each
    channel with its own (named by a channel mention, which Slack shows only to people who
    may see that channel, so no private channel's name leaks); for anyone else, no settings."""
    shown = await front.overview(await slack_member(api, user, team))
    if shown is None:
        return _view([HOME_MEMBER if front.community is not None else DISABLED])
    sections = [HOME_ADMIN]
    for scope, lines in shown:
        title = ("*ワークスペース全体*" if scope.level is Level.WORKSPACE
                 else f"*<#{scope.channel}>*")
        sections.append("\n".join([title, *(escape(line) for line in lines)]))
    return _view(sections)


def _view(sections: list[str]) -> dict[str, Any]:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}
              for text in sections[:50]]
    return {"type": "home", "blocks": blocks}


def register_home(app: Any, front: FrontDoor, api: SlackApi, outcomes: Any) -> None:
    """`app_home_opened` (the Home tab): publish the viewer's view."""

    @app.event("app_home_opened")
    async def app_home_opened(ack: Any, event: dict[str, Any], body: dict[str, Any]) -> None:
        await ack()
        if event.get("tab", "home") != "home" or not isinstance(event.get("user"), str):
            return
        user, team = str(event["user"]), str(body.get("team_id") or "")
        try:
            view = await home_view(front, api, user, team)
            await api.call("views_publish", user_id=user, view=view)
        except Exception:
            log.exception("slack: could not publish the Home tab for %s", user)
        else:
            outcomes[HOME] += 1

"""Slack's settings commands and the app's Home tab: `/rinna config [workspace|channel] …`
for the workspace or the channel, `@rinna 設定 …` in a thread for that thread (Slack runs no
slash command in a thread), and on `app_home_opened` a Home view (views.publish) with the
settings of what the viewer may change, and nothing of the rest.

Who the person is comes from users.info when the command runs (workspace admin or owner; their
home team, so a Slack Connect guest from another organisation is never an admin here); the
rule itself is bot/privilege.py's. Every answer goes to that person alone (ephemeral)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from adapters.slack_api import PLATFORM, SlackApi
from adapters.slack_events import MAX_TEXT_CHARS as MAX_CHARS, SlackMessage
from adapters.slack_text import escape
from bot.community import Community, describe
from bot.community_commands import USAGE, CommunityAdmin, parse_request, settings_text
from bot.ports.community import Level, Scope
from bot.conversation import ConversationKey
from bot.privilege import Member

log = logging.getLogger(__name__)

CONFIG_WORDS = frozenset({"config", "設定"})
CONFIGURED = "config"  # an outcome: a settings command answered
HOME = "home"  # an outcome: a Home tab published
DISABLED = "このボットでは設定の変更が有効になっていません。"
_SCOPE_WORDS = {"workspace": Level.WORKSPACE, "ワークスペース": Level.WORKSPACE,
                "channel": Level.CHANNEL, "チャンネル": Level.CHANNEL}
HOME_ADMIN = "*rinna の設定*（変更: `/rinna config`、スレッドでは `@rinna 設定`）"
HOME_MEMBER = ("rinna の設定を変更できるのは、このワークスペースの管理者だけです。"
               "使い方は `/rinna help` で表示できます。")


def is_config(text: str) -> bool:
    """Whether a command's or mention's text is a settings command (`config …`, `設定 …`)."""
    head = text.strip().split(None, 1)
    return bool(head) and head[0].lower() in CONFIG_WORDS


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


async def run_config(community: Community | None, api: SlackApi, text: str, user: str,
                     team: str, channel: str, thread: str = "") -> str:
    """A settings command's answer (mrkdwn, escaped). `text` starts with the config word;
    in a command, a scope word may follow (`workspace`, `channel`; default: the channel);
    in a thread (`thread` given) the scope is the thread."""
    if community is None:
        return DISABLED
    words = text.strip().split(None, 1)
    rest = words[1] if len(words) > 1 else ""
    level = Level.THREAD if thread else Level.CHANNEL
    first = rest.split(None, 1)
    if not thread and first and first[0].lower() in _SCOPE_WORDS:
        level = _SCOPE_WORDS[first[0].lower()]
        rest = first[1] if len(first) > 1 else ""
    scope = Scope(PLATFORM, team, *(() if level is Level.WORKSPACE else (channel,)),
                  *((thread,) if level is Level.THREAD else ()))
    request = parse_request(rest or "show")
    if request is None:
        return escape(USAGE)
    member = await slack_member(api, user, team)
    return escape(await CommunityAdmin(community).run(member, scope, request))


async def home_view(community: Community | None, api: SlackApi, user: str,
                    team: str) -> dict[str, Any]:
    """The Home tab for `user`: for an admin, the workspace's settings and those of each
    channel with its own (named by a channel mention, which Slack shows only to people who
    may see that channel, so no private channel's name leaks); for anyone else, no settings."""
    member = await slack_member(api, user, team)
    if community is None or not community.policy.privileges.may_configure(member):
        return _view([HOME_MEMBER if community is not None else DISABLED])
    sections = [HOME_ADMIN]
    scopes = [s for s in await community.store.configured_scopes(PLATFORM, team)
              if s.level is not Level.THREAD]
    for scope in [Scope(PLATFORM, team), *(s for s in scopes if s.level is Level.CHANNEL)]:
        settings, _ = await community.at(scope)
        title = ("*ワークスペース全体*" if scope.level is Level.WORKSPACE
                 else f"*<#{scope.channel}>*")
        sections.append("\n".join([title, *(escape(line) for line in describe(settings))]))
    return _view(sections)


def _view(sections: list[str]) -> dict[str, Any]:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text[:3000]}}
              for text in sections[:50]]
    return {"type": "home", "blocks": blocks}


async def config_command(community: Community | None, api: SlackApi,
                         command: Mapping[str, Any]) -> str:
    """`/rinna config [workspace|channel] …`: the answer, for the person alone."""
    return await run_config(community, api, str(command.get("text") or "")[:MAX_CHARS],
                            str(command["user_id"]), str(command.get("team_id") or ""),
                            str(command["channel_id"]))


async def config_in_thread(community: Community | None, api: SlackApi, text: str,
                           message: SlackMessage) -> None:
    """`@rinna 設定 …` in a thread (for that thread; in a channel, for the channel): the
    answer posted in the thread for the person alone (chat.postEphemeral)."""
    answer = await run_config(community, api, text, message.user, message.team,
                              message.channel, message.thread_ts or "")
    await api.call("chat_postEphemeral", channel=message.channel, user=message.user,
                   text=answer, thread_ts=message.thread_ts or None)


def command_key(command: Mapping[str, Any]) -> ConversationKey:
    """The channel a /rinna command was run in, as a conversation key (for its settings)."""
    return ConversationKey(PLATFORM, str(command.get("team_id") or ""),
                           str(command["channel_id"]))


async def status_settings(community: Community | None, command: Mapping[str, Any]) -> str:
    """What `/rinna status` adds: the settings in force in the command's channel."""
    scope = Scope(PLATFORM, str(command.get("team_id") or ""), str(command["channel_id"]))
    return escape(await settings_text(community, scope))


def register_home(app: Any, community: Community | None, api: SlackApi,
                  outcomes: Any) -> None:
    """`app_home_opened` (the Home tab): publish the viewer's view."""

    @app.event("app_home_opened")
    async def app_home_opened(ack: Any, event: dict[str, Any], body: dict[str, Any]) -> None:
        await ack()
        if event.get("tab", "home") != "home" or not isinstance(event.get("user"), str):
            return
        user, team = str(event["user"]), str(body.get("team_id") or "")
        try:
            view = await home_view(community, api, user, team)
            await api.call("views_publish", user_id=user, view=view)
        except Exception:
            log.exception("slack: could not publish the Home tab for %s", user)
        else:
            outcomes[HOME] += 1

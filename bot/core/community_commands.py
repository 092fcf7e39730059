"""The admins' settings commands, once for every platform: `show`, `set KEY VALUE`,
`reset [KEY]` at a scope, answered with one short Japanese text meant for that person alone
(the adapter shows it ephemerally). Discord's `/rinna-config`, Slack's `/rinna config` and
`@rinna 設定 …` in a thread all end here; the adapter states who the person is (a Member,
checked when the command runs) and where (a Scope)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot.core.community import Community, describe
from bot.conversation import ConversationKey
from bot.errors import NotPermitted, SettingRefused
from bot.ports.community import KEYS, Level, Scope, SettingChange
from bot.core.privilege import Member

log = logging.getLogger(__name__)

ACTIONS = {"show": "show", "表示": "show", "set": "set", "変更": "set", "reset": "reset",
           "リセット": "reset", "戻す": "reset"}
SCOPE_NAMES = {Level.WORKSPACE: "サーバー/ワークスペース", Level.CHANNEL: "このチャンネル",
               Level.THREAD: "このスレッド"}
USAGE = ("使い方: show（表示） / set キー 値（変更） / reset [キー]（元に戻す）。"
         f"キー: {', '.join(KEYS)}")
UNCHANGED = "変更はありません（すでにその値です）。"
NO_THREAD = "スレッドの設定はスレッドの中で変更してください。"
# The scope a config command names (first, after the config word); unnamed: where it runs.
SCOPE_WORDS = {"server": Level.WORKSPACE, "サーバー": Level.WORKSPACE,
               "workspace": Level.WORKSPACE, "ワークスペース": Level.WORKSPACE,
               "channel": Level.CHANNEL, "チャンネル": Level.CHANNEL,
               "thread": Level.THREAD, "スレッド": Level.THREAD}


@dataclass(frozen=True, slots=True)
class ConfigRequest:
    action: str  # show, set, reset
    key: str | None = None
    value: str | None = None


def parse_request(text: str) -> ConfigRequest | None:
    """`show` / `set KEY VALUE…` / `reset [KEY]` (Japanese words too); None: not one.
    A persona's value may hold spaces and newlines: everything after the key is the value."""
    parts = text.strip().split(None, 2)
    if not parts or parts[0].lower() not in ACTIONS:
        return None
    action = ACTIONS[parts[0].lower()]
    key = parts[1].lower() if len(parts) > 1 else None
    value = parts[2] if len(parts) > 2 else None
    if action == "set" and (key is None or value is None):
        return None
    if action == "show":
        return ConfigRequest("show")
    return ConfigRequest(action, key, value)


class CommunityAdmin:
    def __init__(self, community: Community) -> None:
        self.community = community

    async def run_text(self, member: Member | None, key: ConversationKey, text: str) -> str:
        """A whole config command as people type it (`config [scope] show|set|reset …`, the
        config word first) where conversation `key` is: the thread there, else the channel,
        unless a scope word names another. `member` None: a person with no rights."""
        words = text.strip().split(None, 1)
        rest = words[1] if len(words) > 1 else ""
        level = Level.THREAD if key.thread else Level.CHANNEL
        first = rest.split(None, 1)
        if first and first[0].lower() in SCOPE_WORDS:
            level = SCOPE_WORDS[first[0].lower()]
            rest = first[1] if len(first) > 1 else ""
        if level is Level.THREAD and not key.thread:
            return NO_THREAD
        scope = Scope.chain(key)[level - 1]
        who = member if member is not None else Member(key.platform, "", "")
        return await self.run(who, scope, parse_request(rest or "show"))

    async def run(self, member: Member, scope: Scope, request: ConfigRequest | None) -> str:
        """Do `request` for `member` at `scope`; the reply for that person alone. Refusals
        (no right, a bad key or value) are one short line and change nothing."""
        if request is None:
            return USAGE
        try:
            if request.action == "show":
                return await self.show(scope)
            if request.action == "set":
                assert request.key is not None and request.value is not None
                changes = await self.community.change(member, scope, request.key,
                                                      request.value)
            else:
                changes = await self.community.reset(member, scope, request.key)
        except (NotPermitted, SettingRefused) as refused:
            return refused.user_message
        if not changes:
            return UNCHANGED
        log.info("%s: settings changed by %s: %s", scope, member.user,
                 ", ".join(change.key for change in changes))
        return "\n".join(_said(change) for change in changes)

    async def show(self, scope: Scope) -> str:
        settings, here = await self.community.at(scope)
        lines = [f"{SCOPE_NAMES[scope.level]}の設定（括弧内: どこで決めたか）:",
                 *describe(settings)]
        if not here:
            lines.append("ここで変えた設定はまだありません。")
        return "\n".join(lines)


def _said(change: SettingChange) -> str:
    where = SCOPE_NAMES[change.scope.level]
    if change.new is None:
        return f"{where}の {change.key} を元に戻しました（{change.old} → 上位の設定）。"
    old = change.old if change.old is not None else "上位の設定"
    return f"{where}の {change.key} を変更しました（{old} → {change.new}）。"


async def settings_text(community: Community | None, scope: Scope | None) -> str:
    """What /status adds: the settings in force where it was asked ("" without community
    settings, or outside a community: a DM)."""
    if community is None or scope is None or not scope.workspace:
        return ""
    settings, _ = await community.at(scope)
    return "\n\nこの場所の設定:\n" + "\n".join(f"・{line}" for line in describe(settings))

"""ADMIN_ROLES names Discord roles by id only, through the real discord.py client (simcord): a
member whose role merely has a listed name (anyone with Manage Roles can create one) is
refused `/rinna-config`."""

from __future__ import annotations

import pytest
import simcord

from adapters.discord_bot import RinnaDiscordBot
from bot.config import Settings
from storage.history import HistoryStore
from tests.test_discord_community import simcord_bot  # noqa: F401

pytestmark = pytest.mark.simcord(settle_timeout=60)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"admin_roles": frozenset({"rinna-admin"})})


async def test_a_role_named_like_an_admin_role_gives_no_rights(
        simcord_env: simcord.Env, simcord_bot: RinnaDiscordBot,  # noqa: F811
        store: HistoryStore) -> None:
    env = simcord_env
    guild = env.create_guild()
    channel = guild.create_text_channel("general")
    mallory = guild.add_member(env.create_user("mallory"),
                               roles=[guild.create_role("rinna-admin")])
    (command,) = [c for c in await env.bot.tree.fetch_commands() if c.name == "rinna-config"]
    guild.set_command_permissions(command, {mallory: True})
    refused = await mallory.slash(channel, "rinna-config set", key="enabled", value="off")
    assert refused.ephemeral and refused.response.content == (
        "設定を変更できるのは、このサーバー（ワークスペース）の管理者だけです。")
    assert await store.audit() == []

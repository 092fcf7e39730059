"""The access policy as a pure function, and its settings."""

from __future__ import annotations

import pytest

from bot.core.access import AccessPolicy, AccessRequest, Denial, check
from bot.config import Settings, load_settings


def ask(user: str = "U1", *, workspace: str = "W1", channel: str = "C1",
        roles: frozenset[str] = frozenset(), is_dm: bool = False) -> AccessRequest:
    return AccessRequest(workspace, channel, user, roles, is_dm)


def test_no_settings_allow_everyone_everywhere() -> None:
    policy = AccessPolicy()
    assert check(policy, ask()) is None
    assert check(policy, ask(is_dm=True, workspace="", channel="D1")) is None


def test_each_setting_on_its_own() -> None:
    assert check(AccessPolicy(workspaces=frozenset({"W1"})), ask(workspace="W2")) is Denial.WORKSPACE
    assert check(AccessPolicy(channels=frozenset({"C1"})), ask(channel="C2")) is Denial.CHANNEL
    assert check(AccessPolicy(users=frozenset({"U1"})), ask("U2")) is Denial.USER
    assert check(AccessPolicy(roles=frozenset({"R1"})), ask("U2")) is Denial.USER
    assert check(AccessPolicy(blocked=frozenset({"U1"})), ask()) is Denial.BLOCKED
    assert check(AccessPolicy(allow_dms=False), ask(is_dm=True)) is Denial.DM
    assert check(AccessPolicy(allow_dms=False), ask()) is None


def test_users_or_roles_either_admits_and_blocked_wins() -> None:
    policy = AccessPolicy(users=frozenset({"U1"}), roles=frozenset({"R1"}),
                          blocked=frozenset({"U3"}))
    assert check(policy, ask("U1")) is None
    assert check(policy, ask("U2", roles=frozenset({"R0", "R1"}))) is None
    assert check(policy, ask("U2", roles=frozenset({"R0"}))) is Denial.USER
    assert check(policy, ask("U3", roles=frozenset({"R1"}))) is Denial.BLOCKED
    assert check(AccessPolicy(users=frozenset({"U3"}), blocked=frozenset({"U3"})),
                 ask("U3")) is Denial.BLOCKED


def test_dms_have_no_channel_to_allow_but_keep_their_workspace() -> None:
    policy = AccessPolicy(workspaces=frozenset({"W1"}), channels=frozenset({"C1"}))
    assert check(policy, ask(is_dm=True, workspace="", channel="D9")) is None  # Discord DM
    assert check(policy, ask(is_dm=True, workspace="W1", channel="D9")) is None  # Slack DM
    assert check(policy, ask(is_dm=True, workspace="W2", channel="D9")) is Denial.WORKSPACE
    # a DM carries no roles: with only ALLOWED_ROLES, DMs are refused
    assert check(AccessPolicy(roles=frozenset({"R1"})), ask(is_dm=True)) is Denial.USER


def test_settings_read_comma_separated_ids(settings: Settings,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_USERS", " 111, 222 ,,333")
    monkeypatch.setenv("ALLOWED_WORKSPACES", "T1")
    monkeypatch.setenv("BLOCKED_USERS", "")
    monkeypatch.setenv("ALLOW_DMS", "false")
    loaded = load_settings()
    assert loaded.allowed_users == {"111", "222", "333"}
    assert loaded.allowed_workspaces == {"T1"}
    assert loaded.blocked_users == frozenset() and loaded.allowed_channels == frozenset()
    policy = AccessPolicy.from_settings(loaded)
    assert policy == AccessPolicy(workspaces=frozenset({"T1"}),
                                  users=frozenset({"111", "222", "333"}), allow_dms=False)
    assert load_settings(allowed_roles=[1, 2]).allowed_roles == {"1", "2"}


def test_slack_connect_one_rule_for_every_entry_point() -> None:
    """The event's workspace and the person's own team must both be allowed; an external
    person is a moderator only where their own team is listed."""
    from bot.core.access import AccessPolicy, AccessRequest

    ours = AccessPolicy(workspaces=frozenset({"T1"}))
    external = AccessRequest.from_teams("T1", "C1", "U9", ("TX", None, 3, "", "T1"))
    assert external.other_teams == {"TX"} and external.external
    assert not ours.allows(external) and not ours.may_moderate(external)
    assert ours.allows(AccessRequest.from_teams("T1", "C1", "U1", ("T1",)))
    assert ours.may_moderate(AccessRequest.from_teams("T1", "C1", "U1", ("T1",)))
    both = AccessPolicy(workspaces=frozenset({"T1", "TX"}))
    assert both.allows(external) and both.may_moderate(external)
    open_policy = AccessPolicy()
    assert open_policy.allows(external) and not open_policy.may_moderate(external)
    dm = AccessRequest.from_teams("T1", "D1", "U9", ("TX",), is_dm=True)
    assert not ours.allows(dm)

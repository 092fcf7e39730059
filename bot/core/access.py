"""Who may use the bot: one pure access policy, used by every adapter before it calls the
platform or touches storage.

Settings (comma-separated ids; empty = no restriction): ALLOWED_WORKSPACES (Discord guild ids,
Slack team ids), ALLOWED_CHANNELS (a thread counts as its parent channel), ALLOWED_USERS,
ALLOWED_ROLES (Discord; users or roles: either admits), BLOCKED_USERS (never answered, whatever
else says), ALLOW_DMS (true).

Slack Connect (one rule for every entry point: messages, buttons, shortcuts, commands, the
assistant): an event names the workspace it happened in (`workspace`) and, for a person from
another organisation in a shared channel, that person's own team (`other_teams`). With
ALLOWED_WORKSPACES set, both must be allowed. Such an external person is never a moderator
unless their own team is listed in ALLOWED_WORKSPACES (`may_moderate`): a users.info that calls
them an admin speaks for their organisation, not this one.

A DM has no channel to allow: it is governed by ALLOW_DMS, the user lists and (when the
platform names one, as Slack does) the workspace. A DM carries no roles, so with only
ALLOWED_ROLES set, DMs are refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# What a refused slash or application command is told (ephemerally); nothing else is said.
DENIED_MESSAGE = "このボットはここでは利用できません。"


class Denial(StrEnum):
    """Why a request was refused (for DEBUG logs; users are never told the reason)."""

    BLOCKED = "blocked user"
    DM = "DMs are off"
    WORKSPACE = "workspace not allowed"
    CHANNEL = "channel not allowed"
    USER = "user not allowed"


@dataclass(frozen=True, slots=True)
class AccessRequest:
    """Who asks, and where. Ids are the platform's, as strings."""

    workspace: str  # Discord guild id or Slack team id ("" when the platform names none)
    channel: str  # a thread's parent channel; the DM channel for a DM
    user: str
    roles: frozenset[str] = frozenset()  # Discord role ids of the member
    is_dm: bool = False
    # Slack Connect: the person's own team(s), where they differ from `workspace`
    other_teams: frozenset[str] = frozenset()

    @classmethod
    def from_teams(cls, workspace: str, channel: str, user: str, teams: Iterable[object] = (),
                   *, is_dm: bool = False) -> AccessRequest:
        """A request whose event names `workspace` and, maybe, more teams (the person's own:
        Slack's `user_team`, `user.team_id`, ...); blanks, non-strings and `workspace` itself
        are left out."""
        others = frozenset(t for t in teams if isinstance(t, str) and t) - {workspace}
        return cls(workspace, channel, user, is_dm=is_dm, other_teams=others)

    @property
    def external(self) -> bool:
        """The person belongs to another organisation than the workspace of the event."""
        return bool(self.other_teams)


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    workspaces: frozenset[str] = field(default_factory=frozenset)
    channels: frozenset[str] = field(default_factory=frozenset)
    users: frozenset[str] = field(default_factory=frozenset)
    roles: frozenset[str] = field(default_factory=frozenset)
    blocked: frozenset[str] = field(default_factory=frozenset)
    allow_dms: bool = True

    @classmethod
    def from_settings(cls, settings: Any) -> AccessPolicy:
        return cls(
            workspaces=frozenset(settings.allowed_workspaces),
            channels=frozenset(settings.allowed_channels),
            users=frozenset(settings.allowed_users),
            roles=frozenset(settings.allowed_roles),
            blocked=frozenset(settings.blocked_users),
            allow_dms=settings.allow_dms,
        )

    @property
    def restricts_workspaces(self) -> bool:
        return bool(self.workspaces)

    def workspace_allowed(self, workspace: str) -> bool:
        """Whether the bot may stay in this guild / answer this team at all."""
        return not self.workspaces or workspace in self.workspaces

    def check(self, request: AccessRequest) -> Denial | None:
        """None when the request is allowed, else why it is not."""
        return check(self, request)

    def allows(self, request: AccessRequest) -> bool:
        return check(self, request) is None

    def may_moderate(self, request: AccessRequest) -> bool:
        """Whether this person may count as a moderator at all (before asking the platform
        whether they are an admin): not if they are external and their team is not listed."""
        return not request.external or (self.restricts_workspaces
                                         and request.other_teams <= self.workspaces)


def check(policy: AccessPolicy, request: AccessRequest) -> Denial | None:
    """The whole policy, as one pure function."""
    if request.user in policy.blocked:
        return Denial.BLOCKED
    if any(not policy.workspace_allowed(team) for team in request.other_teams):
        return Denial.WORKSPACE  # Slack Connect: the person's own team must be allowed too
    if request.is_dm:
        if not policy.allow_dms:
            return Denial.DM
        # A DM is in a workspace only where the platform says so (Slack's team).
        if request.workspace and not policy.workspace_allowed(request.workspace):
            return Denial.WORKSPACE
    else:
        if not policy.workspace_allowed(request.workspace):
            return Denial.WORKSPACE
        if policy.channels and request.channel not in policy.channels:
            return Denial.CHANNEL
    if policy.users or policy.roles:
        if request.user not in policy.users and not (request.roles & policy.roles):
            return Denial.USER
    return None


def parse_ids(value: Any) -> frozenset[str]:
    """`"1, 2,,3"` -> {"1", "2", "3"}; an iterable of ids is taken as is."""
    if value is None:
        return frozenset()
    if isinstance(value, (int, str)):
        items: Iterable[Any] = str(value).split(",")
    else:
        items = value
    return frozenset(s for item in items if (s := str(item).strip()))

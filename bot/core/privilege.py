"""One privilege model for every platform: who may change a community's settings.

The adapters state the platform's facts about a person as a `Member` (checked when the
command runs, never cached); the rule is here, once:

- Discord: *Manage Server* in that server, or a role the host names in ADMIN_ROLES (by id only:
  anyone with Manage Roles can create a role of any name), or a user the host names in ADMIN_USERS.
- Slack: a workspace admin or owner, or a user the host names in ADMIN_USERS.
- Slack Connect: a person from another organisation (their home team is not this workspace)
  is never an admin of this workspace, whatever their own team makes them.
- Stopping or redoing someone else's answer is not changed by this: the moderator rule of
  bot/core/answer_controls.py (Manage Messages / channel managers) stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Member:
    """A person as their platform sees them in one workspace, when they run a command."""

    platform: str
    user: str  # the platform's user id
    workspace: str  # the server / workspace the command runs in ("" in a DM)
    manages_workspace: bool = False  # Discord: Manage Server; Slack: workspace admin or owner
    roles: frozenset[str] = frozenset()  # Discord: the member's role ids and names
    home_workspace: str = ""  # Slack: the person's own team ("" when the platform has none)

    @property
    def external(self) -> bool:
        """From another organisation (Slack Connect): their team is not this workspace."""
        return bool(self.home_workspace) and self.home_workspace != self.workspace


@dataclass(frozen=True, slots=True)
class Privileges:
    """The host's part of the rule (ADMIN_ROLES, ADMIN_USERS)."""

    admin_roles: frozenset[str] = frozenset()
    admin_users: frozenset[str] = frozenset()

    def may_configure(self, member: Member) -> bool:
        """Whether `member` may change the settings of their workspace and its channels and
        threads. Never in a DM (no community there), never from another organisation."""
        if member.external or not member.workspace:
            return False
        if member.user in self.admin_users or member.manages_workspace:
            return True
        return bool(member.roles & self.admin_roles)

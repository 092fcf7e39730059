"""The platforms' own identity calls, made before (and while) the model loads: Slack's
`auth.test` (and `apps.connections.open` for Socket Mode), Discord's login (`GET /users/@me`).

A token the platform rejects is a ConfigError naming the setting and the platform's reason
(`rinna-bot run` exits 2 in seconds instead of after a model load); a platform that cannot be
reached is a PlatformUnreachable (transient: `run` starts anyway and its clients retry).
"""

from __future__ import annotations

import asyncio

import aiohttp

from bot.config import Settings
from bot.errors import ConfigError, RinnaError

CHECK_TIMEOUT_S = 15.0
# Slack's answers that mean "this token is not accepted" (anything else is an outage).
SLACK_AUTH_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive",
                               "token_revoked", "token_expired", "not_allowed_token_type",
                               "invalid_token"})


# The bot scopes slack-manifest.yml asks for: what the bot uses (tests keep the two equal).
SLACK_BOT_SCOPES = ("app_mentions:read", "channels:history", "groups:history", "im:history",
                    "mpim:history", "assistant:write", "chat:write", "commands", "users:read",
                    "files:read")
# What each scope is needed for, for one that the token lacks.
SCOPE_USES = {"files:read": "attached files are not read"}


class PlatformUnreachable(RinnaError):
    """A platform could not be asked (network, DNS, an outage): worth a retry, not a fix."""


async def check_slack(settings: Settings) -> str:
    """`auth.test` with SLACK_BOT_TOKEN, and in Socket Mode `apps.connections.open` with
    SLACK_APP_TOKEN (the URL it returns is left unused). Returns who the bot is, and which of
    the manifest's scopes the token lacks, if any (see `missing_scopes`)."""
    who, missing = await ask_slack(settings)
    line = f"Slack: the tokens are accepted (signed in as {who})"
    if missing:
        line += "; " + scopes_note(missing)
    return line


async def slack_findings(settings: Settings) -> list[tuple[bool, str]]:
    """`doctor`'s report: who the bot is, and (failing) the manifest's scopes it lacks."""
    who, missing = await ask_slack(settings)
    found = [(True, f"Slack: the tokens are accepted (signed in as {who})")]
    if missing:
        found.append((False, "Slack: " + scopes_note(missing)))
    return found


def scopes_note(missing: tuple[str, ...]) -> str:
    uses = "; ".join(f"{scope}: {SCOPE_USES[scope]}" for scope in missing
                     if scope in SCOPE_USES)
    return (f"the bot token lacks the scopes {', '.join(missing)}" + (f" ({uses})" if uses else "")
            + "; add them (slack-manifest.yml has them) and reinstall the app to the workspace")


def missing_scopes(granted: str | None) -> tuple[str, ...]:
    """The manifest's scopes missing from Slack's `x-oauth-scopes` header (none when Slack
    did not send the header: nothing is known)."""
    if granted is None:
        return ()
    have = {scope.strip() for scope in granted.split(",")}
    return tuple(scope for scope in SLACK_BOT_SCOPES if scope not in have)


async def ask_slack(settings: Settings) -> tuple[str, tuple[str, ...]]:
    """Who the bot is on Slack, and the scopes its token lacks; raises as `check_slack`."""
    from slack_sdk.errors import SlackApiError
    from slack_sdk.web.async_client import AsyncWebClient

    assert settings.slack_bot_token is not None
    calls = [("SLACK_BOT_TOKEN", settings.slack_bot_token, "auth.test",
              "set it to the app's Bot User OAuth Token (OAuth & Permissions, xoxb-...)")]
    if settings.slack_app_token is not None:
        calls.append(("SLACK_APP_TOKEN", settings.slack_app_token, "apps.connections.open",
                      "set it to an app-level token (xapp-...) with connections:write"))
    who: str = ""
    missing: tuple[str, ...] = ()
    for key, token, method, fix in calls:
        client = AsyncWebClient(token=token.get_secret_value(), base_url=settings.slack_api_url,
                                timeout=int(CHECK_TIMEOUT_S))
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                answer = await client.api_call(method)
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error in SLACK_AUTH_ERRORS:
                raise ConfigError(f"{key} was rejected by Slack ({method}: {error}); {fix}"
                                  ) from None
            raise PlatformUnreachable(f"Slack {method} failed ({error or exc.response.status_code})"
                                      ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PlatformUnreachable(f"Slack could not be reached for {method} "
                                      f"({type(exc).__name__})") from None
        if method == "auth.test":
            who = f"{answer.get('user')} in {answer.get('team')}"
            headers = {str(k).lower(): v for k, v in (answer.headers or {}).items()}
            missing = missing_scopes(headers.get("x-oauth-scopes"))
    return who, missing


async def check_discord(settings: Settings) -> str:
    """Discord's login (`GET /users/@me` with the bot token), nothing more: no gateway."""
    import discord

    assert settings.discord_token is not None
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            user = await http.static_login(settings.discord_token.get_secret_value())
    except discord.LoginFailure:
        raise ConfigError("DISCORD_TOKEN was rejected by Discord (401 Unauthorized); copy it "
                          "again from the Developer Portal (Bot > Reset Token)") from None
    except discord.HTTPException as exc:
        raise PlatformUnreachable(f"Discord login failed ({exc.status})") from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise PlatformUnreachable(f"Discord could not be reached ({type(exc).__name__})"
                                  ) from None
    finally:
        await http.close()
    return f"Discord: the token is accepted (bot {user.get('username')})"

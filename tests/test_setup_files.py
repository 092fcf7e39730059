"""The files a person sets the bot up with say what the code does: the Slack manifest has what
every listener the app registers needs (in Socket Mode and in HTTP mode as its comments say to
make it), `.env.example` does not override what the image owns, the restart policies follow
the exit-code contract, and the model's facts live in docs/model.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack_api import SlackApi, UserNames
from adapters.slack_app import SlackHandlers, register
from adapters.slack_service import EVENTS_PATH
from bot.config import Settings
from bot.core.chat import ChatService
from bot.core.front_door import FrontDoor
from tests.slack_fakes import BOT_TOKEN

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "slack-manifest.yml"

# Slack's message event per kind of conversation, and the scope each one needs.
MESSAGE_EVENTS = {"message.channels": "channels:history", "message.groups": "groups:history",
                  "message.im": "im:history", "message.mpim": "mpim:history"}


class RecordingApp:
    """The real AsyncApp, noting what each registration asks for (kind, its argument)."""

    KINDS = ("event", "command", "shortcut", "action", "view", "options", "assistant",
             "message")

    def __init__(self, app: AsyncApp) -> None:
        self.app = app
        self.registered: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.app, name)
        if name not in self.KINDS:
            return target

        def record(*args: Any, **kwargs: Any) -> Any:
            self.registered.append((name, args[0] if args else None))
            return target(*args, **kwargs)

        return record


@pytest.fixture
def registered(chat: ChatService) -> list[tuple[str, Any]]:
    app = AsyncApp(client=AsyncWebClient(token=BOT_TOKEN), signing_secret="x",
                   request_verification_enabled=False)
    api = SlackApi(AsyncWebClient(token=BOT_TOKEN))
    recording = RecordingApp(app)
    handlers = SlackHandlers(front=FrontDoor(chat), api=api, names=UserNames(api))
    register(recording, handlers)  # type: ignore[arg-type]
    return recording.registered


def http_mode(text: str) -> str:
    """The manifest changed as its header says for HTTP mode: the lines marked "HTTP mode"
    uncommented, Socket Mode off."""
    text = re.sub(r"^(\s*)# ((?:url|request_url): \S+)\s+# HTTP mode.*$", r"\1\2", text,
                  flags=re.M)
    return text.replace("socket_mode_enabled: true", "socket_mode_enabled: false")


def missing(manifest: dict[str, Any], registered: list[tuple[str, Any]]) -> list[str]:
    """What the manifest lacks for the listeners registered (empty: nothing)."""
    features, settings = manifest["features"], manifest["settings"]
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    events = set(settings["event_subscriptions"]["bot_events"])
    http = not settings["socket_mode_enabled"]
    interactivity = settings.get("interactivity") or {}
    problems = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    for kind, arg in registered:
        name = arg.get("type") if isinstance(arg, dict) else arg
        if kind == "event" and name == "message":
            need(set(MESSAGE_EVENTS) <= events, "message.* events")
            need(set(MESSAGE_EVENTS.values()) <= scopes, "the message events' scopes")
        elif kind == "event":
            need(name in events, f"event {name}")
            need(name != "app_mention" or "app_mentions:read" in scopes, "app_mentions:read")
            need(name != "app_home_opened" or features.get("app_home", {}).get(
                "home_tab_enabled") is True, "features.app_home.home_tab_enabled")
        elif kind == "command":
            (command,) = [c for c in features["slash_commands"] if c["command"] == name] or [{}]
            need(bool(command), f"slash command {name}")
            need("commands" in scopes, "scope commands")
            need(not http or command.get("url", "").endswith(EVENTS_PATH), f"{name}'s url")
        elif kind in ("shortcut", "action", "view"):
            need(interactivity.get("is_enabled") is True, f"interactivity for {kind} {name}")
            need(not http or interactivity.get("request_url", "").endswith(EVENTS_PATH),
                 f"interactivity.request_url for {kind} {name}")
            if kind == "shortcut":
                need(any(s["callback_id"] == name for s in features.get("shortcuts", [])),
                     f"shortcut {name}")
        elif kind == "assistant":
            need("assistant_view" in features, "features.assistant_view")
            need({"assistant_thread_started", "assistant_thread_context_changed",
                  "message.im"} <= events, "the assistant's events")
            need({"assistant:write", "im:history"} <= scopes, "the assistant's scopes")
        else:
            problems.append(f"{kind} {name}: unknown to this test; add what it needs")
    if http and events:
        need(settings["event_subscriptions"].get("request_url", "").endswith(EVENTS_PATH),
             "event_subscriptions.request_url")
    return problems


@pytest.mark.parametrize("mode", ["socket", "http"])
def test_the_manifest_has_what_every_registered_listener_needs(
        registered: list[tuple[str, Any]], mode: str) -> None:
    text = MANIFEST.read_text(encoding="utf-8")
    manifest = yaml.safe_load(http_mode(text) if mode == "http" else text)
    kinds = {kind for kind, _ in registered}
    assert {"event", "command", "shortcut", "action", "assistant"} <= kinds, registered
    assert missing(manifest, registered) == []
    assert manifest["settings"]["socket_mode_enabled"] is (mode == "socket")


@pytest.mark.parametrize("line", ["(1 of 3)", "(2 of 3)", "(3 of 3)"])
def test_http_mode_breaks_without_any_one_of_its_three_urls(
        registered: list[tuple[str, Any]], line: str) -> None:
    text = "\n".join(x for x in MANIFEST.read_text(encoding="utf-8").splitlines()
                     if not x.rstrip().endswith(line))
    assert missing(yaml.safe_load(http_mode(text)), registered) != []


def test_the_slack_guide_names_the_three_urls() -> None:
    guide = (ROOT / "docs" / "slack.md").read_text(encoding="utf-8")
    for place in ("features.slash_commands[0].url", "settings.event_subscriptions.request_url",
                  "settings.interactivity.request_url"):
        assert place in guide


# ----- containers and the exit-code contract --------------------------------------------------

def test_the_example_env_leaves_the_images_own_settings_alone() -> None:
    """Under `docker run --env-file .env` every line of .env overrides the image's ENV: the
    example, copied as it is, must not set what the image sets."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    block = re.search(r"^ENV ((?:.*\\\n)*.*)$", dockerfile, re.M).group(1)
    image = {k for k in re.findall(r"([A-Z_]+)=", block) if k.lower() in Settings.model_fields}
    assert image >= {"DATABASE_PATH", "METRICS_HOST"}
    example = {k for k, v in dotenv_values(ROOT / ".env.example").items() if v}
    assert image & example == set()
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert all(f"# {key}=" in text for key in image)  # still listed, commented


def test_restarts_follow_the_exit_code_contract() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    service = services["rinna-bot"]  # (PostgreSQL beside it: test_compose_offers_postgresql)
    policy, _, count = service["restart"].partition(":")
    assert policy == "on-failure" and 1 <= int(count) <= 10  # bounded: 2 is not retried forever
    operations = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    assert "RestartPreventExitStatus=2" in operations
    table = re.search(r"## Exit codes\n(.*?)\n## ", operations, re.S).group(1)
    assert all(f"| `{code}` |" in table for code in (0, 1, 2))


def test_compose_offers_a_second_replica_on_postgresql_off_by_default() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    first, second = services["rinna-bot"], services["rinna-bot-2"]
    assert second["profiles"] == ["replicas"] and "profiles" not in first
    assert second["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert second["image"] == first["image"] and second["env_file"] == ".env"
    assert second["restart"] == first["restart"]
    # its own health port; no SQLite volume: the history is PostgreSQL's
    assert set(second["ports"]).isdisjoint(first["ports"])
    assert not any(v.startswith("data:") for v in second["volumes"])
    assert second["environment"]["DISCORD_SHARD_IDS"] == "1"


def test_compose_offers_postgresql_off_by_default() -> None:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]
    postgres = services["postgres"]
    assert postgres["image"] == "postgres:15" and postgres["profiles"] == ["postgres"]
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert postgres["env_file"] == "postgres.env"  # its password: not in .env, not a default
    assert "POSTGRES_PASSWORD" not in postgres["environment"]


# ----- the model's facts: in the repository ---------------------------------------------------

def test_the_model_facts_live_in_docs_model_md() -> None:
    from bot.conversation import Speaker, Turn
    from bot.core.prompt import build_prompt

    model = (ROOT / "docs" / "model.md").read_text(encoding="utf-8")
    example = re.search(r"```text\n(ユーザー: .*?<NL>システム: )\n```", model, re.S).group(1)
    turns = [Turn(Speaker(s), t) for s, t in re.findall(r"(ユーザー|システム): (.*?)(?:<NL>|$)",
                                                          example.removesuffix("システム: "))]
    assert build_prompt(turns) == example  # the code builds exactly the documented prompt
    assert "Tokenizer trap" in model and "add_special_tokens=False" in model
    cited = subprocess.run(["git", "grep", "-l", "DESIGN" + ".md"], cwd=ROOT,
                           capture_output=True, text=True, check=False).stdout
    assert cited == ""

"""A local Slack for tests: the Web API (GET and POST /api/<method>), the Socket Mode
websocket that `apps.connections.open` points at, and slash-command response_urls.

Every call is recorded; tests wait on conditions (`wait_for`, `eventually`), never on sleeps.
Also: HMAC v0 request signing, event payload builders and a scripted Generator.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSMsgType, web

from adapters.slack_service import SlackService, build_slack_service
from bot.config import Settings
from bot.core.chat import ChatService
from bot.core.front_door import FrontDoor
from bot.core.status import StatusSource
from tests.file_fakes import FakeFile, FileShelf

TEAM = "T0TEAM"
BOT_USER = "UBOT"
BOT_ID = "BBOT"
SIGNING_SECRET = "5e1ec7ab1e5ec2e75e1ec7ab1e5ec2e7"  # 32 hex digits, as Slack's are
BOT_TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-test-token"
USERS = {"U1": "たろう", "U2": "はなこ"}
WAIT_S = 30.0


@dataclass(frozen=True, slots=True)
class ApiCall:
    method: str
    params: dict[str, Any]
    token: str | None

    @property
    def text(self) -> str:
        return str(self.params.get("text", ""))


@dataclass(frozen=True, slots=True)
class Failure:
    error: str
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    applied: bool = False  # the call took effect before the error (a 5xx after the write)
    ts: str | None = None  # only a call about this message (its `ts` argument)


class FakeSlack:
    """`keep_messages`: posted messages (with their metadata) are kept in `threads` (by
    channel and thread ts; a message outside a thread under (channel, "")) and returned by
    conversations.replies / conversations.history, and chat.update changes them."""

    def __init__(self, *, keep_messages: bool = False, streaming: bool = False,
                 admins: frozenset[str] = frozenset(),
                 external: frozenset[str] = frozenset(),
                 feedback_buttons: bool = True) -> None:
        self.keep_messages = keep_messages
        # Without `feedback_buttons`, blocks holding that element are refused (invalid_blocks),
        # as by a workspace that does not have it.
        self.feedback_buttons = feedback_buttons
        # chat.startStream / appendStream / stopStream as Slack's reference describes them;
        # without `streaming`, chat.startStream answers as a Slack that does not have it.
        self.streaming = streaming
        self.admins = admins  # users.info says is_admin for these
        self.external = external  # Slack Connect: users.info gives another team_id
        # Every message the bot made, by ts: its current text (a stream's: what was streamed),
        # blocks, metadata and whether it is still streaming.
        self.messages: dict[str, dict[str, Any]] = {}
        self.calls: list[ApiCall] = []
        self.acks: list[dict[str, Any]] = []
        self.responses: list[dict[str, Any]] = []  # what was posted to response_urls
        self.threads: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.failures: dict[str, list[Failure]] = {}
        self.always_fail: dict[str, Failure] = {}
        # method -> an event its calls wait for before being answered (a slow Slack)
        self.held: dict[str, asyncio.Event] = {}
        self.sockets: list[web.WebSocketResponse] = []
        self._ts = itertools.count(1)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        # Files people share, served as Slack serves url_private: only with the bot token.
        self.files = FileShelf("/files-pri")
        # What auth.test's x-oauth-scopes header lists (None: no header).
        self.scopes: str | None = None

    # ----- lifecycle -----
    async def start(self) -> FakeSlack:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/link", self._socket)
        app.router.add_post("/respond/{id}", self._respond)
        self.files.route(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.files.base = f"http://127.0.0.1:{self.port}"
        return self

    def share(self, name: str, data: bytes = b"", *, mimetype: str = "text/plain",
              filetype: str = "text", mode: str = "hosted", **serve: Any) -> dict[str, Any]:
        """A file a person shares: served (with the bot token only) and described as a
        message event's `files` entry describes it. `serve`: FakeFile's other fields."""
        file_id = f"F{len(self.files.files) + 1:08d}"
        size = serve.pop("size", serve.get("endless") or len(data))
        url = self.files.add(f"{TEAM}-{file_id}/{name}",
                             FakeFile(data, mimetype, token=BOT_TOKEN, **serve))
        return {"id": file_id, "name": name, "title": name, "mimetype": mimetype,
                "filetype": filetype, "mode": mode, "size": size, "is_external": False,
                "url_private": url, "url_private_download": url + "?download=1"}

    async def close(self) -> None:
        self.files.released.set()
        for ws in self.sockets:
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/"

    def response_url(self, name: str = "1") -> str:
        return f"http://127.0.0.1:{self.port}/respond/{name}"

    # ----- scripting -----
    def fail(self, method: str, error: str, *, status: int = 200, times: int = 1,
             headers: dict[str, str] | None = None, applied: bool = False,
             ts: str | None = None) -> None:
        self.failures.setdefault(method, []).extend(
            [Failure(error, status, headers or {}, applied, ts)] * times)

    # ----- waiting and reading -----
    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    def called(self, method: str) -> list[ApiCall]:
        return [call for call in self.calls if call.method == method]

    def posts(self, channel: str | None = None, thread_ts: str | None = None) -> list[ApiCall]:
        """Messages posted (failed attempts left out)."""
        return [c for c in self.called("chat.postMessage") if "_error" not in c.params
                and (channel is None or c.params.get("channel") == channel)
                and (thread_ts is None or c.params.get("thread_ts") == thread_ts)]

    def texts_of(self, ts: str) -> list[str]:
        """Every text a message had: the post, then each chat.update of it."""
        texts = [c.text for c in self.called("chat.postMessage") if c.params.get("_ts") == ts]
        return texts + [c.text for c in self.called("chat.update")
                        if c.params.get("ts") == ts and "_error" not in c.params]

    # ----- the Socket Mode side -----
    async def push(self, envelope: dict[str, Any]) -> None:
        await self.wait_for(lambda: bool(self.sockets))
        await self.sockets[-1].send_json(envelope)

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "hello", "num_connections": 1,
                            "connection_info": {"app_id": "A1"}})
        await self._record(lambda: self.sockets.append(ws))
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                data = json.loads(message.data)
                await self._record(lambda: self.acks.append(data))
        return ws

    async def _respond(self, request: web.Request) -> web.Response:
        body = await request.json()
        await self._record(lambda: self.responses.append(body))
        return web.Response(text="ok")

    # ----- the Web API side -----
    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if (gate := self.held.get(method)) is not None:
            await gate.wait()
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update(await request.post())
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") or params.get("token")
        failure = self._failure(method, params)
        if failure is not None:
            if failure.applied:
                self._answer(method, params)
            params["_error"] = failure.error
            await self._record(lambda: self.calls.append(ApiCall(method, params, token)))
            return web.json_response({"ok": False, "error": failure.error},
                                     status=failure.status, headers=failure.headers)
        body = self._answer(method, params)
        if not body.get("ok"):
            params["_error"] = body.get("error")
        if method == "chat.postMessage" and body.get("ok"):
            params["_ts"] = body["ts"]
        await self._record(lambda: self.calls.append(ApiCall(method, params, token)))
        headers = {"x-oauth-scopes": self.scopes} if self.scopes is not None else None
        return web.json_response(body, headers=headers)

    def _failure(self, method: str, params: dict[str, Any]) -> Failure | None:
        if method in self.always_fail:
            return self.always_fail[method]
        queued = self.failures.get(method) or []
        for n, failure in enumerate(queued):
            if failure.ts is None or failure.ts == params.get("ts"):
                return queued.pop(n)
        return None

    def _answer(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        blocks = list(_json(params.get("blocks") or []))
        for chunk in _json(params.get("chunks") or []):
            if chunk.get("type") == "blocks":
                blocks += chunk.get("blocks") or []
        if method.startswith("chat.") and (problem := _invalid_blocks(
                blocks, feedback_buttons=self.feedback_buttons)) is not None:
            return {"ok": False, "error": "invalid_blocks", "errors": [problem]}
        if method == "auth.test":
            return {"ok": True, "url": "https://test.slack.com/", "team": "Test", "user": "rinna",
                    "team_id": TEAM, "user_id": BOT_USER, "bot_id": BOT_ID}
        if method == "chat.postMessage":
            ts = f"1800000000.{next(self._ts):06d}"
            self.messages[ts] = {"channel": params.get("channel"), "text": params.get("text"),
                                 "blocks": _json(params.get("blocks") or []),
                                 "metadata": params.get("metadata"), "streaming": False,
                                 "thread_ts": params.get("thread_ts")}
            if self.keep_messages:
                kept = {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "ts": ts,
                        "text": params.get("text")}
                if isinstance(params.get("metadata"), dict):
                    kept["metadata"] = params["metadata"]
                if params.get("blocks"):
                    kept["blocks"] = _json(params["blocks"])
                place = (str(params.get("channel")), str(params.get("thread_ts") or ""))
                self.threads.setdefault(place, []).append(kept)
            return {"ok": True, "channel": params.get("channel"), "ts": ts,
                    "message": {"text": params.get("text"), "ts": ts}}
        if method == "chat.update":
            current = self.messages.get(str(params.get("ts")))
            if current is not None and current.get("streaming"):
                return {"ok": False, "error": "cant_update_message"}
            changes: dict[str, Any] = {"text": params.get("text")}
            if "blocks" in params:
                changes["blocks"] = _json(params["blocks"])
            if current is not None:
                current.update(changes)
            for messages in self.threads.values():
                for kept in messages:
                    if kept.get("ts") == params.get("ts"):
                        kept.update(changes)
            return {"ok": True, "channel": params.get("channel"), "ts": params.get("ts"),
                    "text": params.get("text")}
        if method in ("chat.startStream", "chat.appendStream", "chat.stopStream"):
            return self._stream(method, params)
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": f"1800000000.{next(self._ts):06d}"}
        if method.startswith("assistant.threads."):
            missing = [name for name in ("channel_id", "thread_ts") if not params.get(name)]
            if method == "assistant.threads.setSuggestedPrompts":
                missing = [] if params.get("channel_id") and params.get("prompts") else ["x"]
            return {"ok": True} if not missing else {"ok": False, "error": "invalid_arguments"}
        if method == "conversations.replies":
            return self._replies(params)
        if method == "conversations.history":
            return {"ok": True, "messages": self._visible(
                self.threads.get((str(params.get("channel")), ""), []), params), "has_more": False}
        if method == "users.info":
            user = str(params.get("user"))
            if user not in USERS:
                return {"ok": False, "error": "user_not_found"}
            return {"ok": True, "user": {"id": user, "name": f"name-{user}",
                                         "is_admin": user in self.admins, "is_owner": False,
                                         "team_id": "T0OTHER" if user in self.external else TEAM,
                                         "profile": {"display_name": USERS[user]}}}
        if method == "views.publish":
            view = _json(params.get("view") or {})
            if not params.get("user_id") or not isinstance(view, dict) or view.get(
                    "type") != "home" or (problem := _invalid_blocks(view.get("blocks") or [],
                                                                     feedback_buttons=True)):
                return {"ok": False, "error": "invalid_arguments"}
            return {"ok": True, "view": {"id": "V1", **view}}
        if method == "apps.connections.open":
            return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/link"}
        return {"ok": False, "error": "unknown_method"}

    def _stream(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """chat.startStream / appendStream / stopStream, per Slack's reference: a stream is a
        message in a thread (recipient user and team required outside DMs) that grows by
        markdown_text or chunks until stopped; stopStream may add blocks and metadata."""
        if not self.streaming:
            return {"ok": False, "error": "unknown_method"}
        channel = str(params.get("channel") or "")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if method == "chat.startStream":
            if not params.get("thread_ts"):
                return {"ok": False, "error": "invalid_arguments"}
            if not channel.startswith("D") and not (
                    params.get("recipient_user_id") and params.get("recipient_team_id")):
                return {"ok": False, "error": "missing_recipient_user_id"}
            ts = f"1800000000.{next(self._ts):06d}"
            self.messages[ts] = {"channel": channel, "text": "", "blocks": [],
                                 "metadata": None, "streaming": True,
                                 "thread_ts": params.get("thread_ts")}
            self._grow(self.messages[ts], params)
            if self.keep_messages:
                place = (channel, str(params.get("thread_ts")))
                self.threads.setdefault(place, []).append(
                    {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "ts": ts,
                     "text": ""})
            return {"ok": True, "channel": channel, "ts": ts}
        ts = str(params.get("ts") or "")
        current = self.messages.get(ts)
        if current is None:
            return {"ok": False, "error": "message_not_found"}
        if not current["streaming"]:
            return {"ok": False, "error": "message_not_in_streaming_state"}
        self._grow(current, params)
        if method == "chat.stopStream":
            current["streaming"] = False
            if params.get("blocks"):
                current["blocks"] = current["blocks"] + list(_json(params["blocks"]))
            if params.get("metadata"):
                current["metadata"] = _json(params["metadata"])
        for messages in self.threads.values():
            for kept in messages:
                if kept.get("ts") == ts:
                    kept["text"] = current["text"]
                    kept["blocks"] = current["blocks"]
                    if current.get("metadata"):
                        kept["metadata"] = current["metadata"]
        body: dict[str, Any] = {"ok": True, "channel": channel, "ts": ts}
        if method == "chat.stopStream":
            body["message"] = {"text": current["text"], "ts": ts, "blocks": current["blocks"]}
        return body

    @staticmethod
    def _grow(message: dict[str, Any], params: dict[str, Any]) -> None:
        if isinstance(params.get("markdown_text"), str):
            message["text"] += params["markdown_text"]
        for chunk in _json(params.get("chunks") or []):
            if chunk.get("type") == "markdown_text":
                message["text"] += str(chunk.get("text", ""))
            elif chunk.get("type") == "blocks":
                message["blocks"] = message["blocks"] + list(chunk.get("blocks") or [])

    def _replies(self, params: dict[str, Any]) -> dict[str, Any]:
        """Like Slack: oldest first, from `oldest` up to `latest`, `limit` per page, paged by
        cursor."""
        messages = self.threads.get((str(params.get("channel")), str(params.get("ts"))), [])
        inclusive = str(params.get("inclusive", "")).lower() in ("1", "true")
        if latest := params.get("latest"):
            messages = [m for m in messages
                        if (m["ts"] <= latest if inclusive else m["ts"] < latest)]
        if oldest := params.get("oldest"):
            messages = [m for m in messages
                        if (m["ts"] >= oldest if inclusive else m["ts"] > oldest)]
        start = int(params.get("cursor") or 0)
        limit = int(params.get("limit") or 1000)
        page, more = messages[start:start + limit], start + limit < len(messages)
        body: dict[str, Any] = {"ok": True, "messages": self._visible(page, params),
                                "has_more": more}
        if more:
            body["response_metadata"] = {"next_cursor": str(start + limit)}
        return body

    @staticmethod
    def _visible(messages: list[dict[str, Any]], params: dict[str, Any]) -> list[dict[str, Any]]:
        """Like Slack: message metadata only with include_all_metadata."""
        if _flag(params.get("include_all_metadata")):
            return messages
        return [{k: v for k, v in m.items() if k != "metadata"} for m in messages]

    async def _record(self, change: Callable[[], None]) -> None:
        async with self._changed:
            change()
            self._changed.notify_all()


# Which elements each Block Kit block takes (the subset the bot uses), per Slack's reference.
_ELEMENTS = {"actions": {"button", "static_select", "overflow", "datepicker"},
             "context_actions": {"feedback_buttons", "icon_button"}}


def _invalid_blocks(blocks: list[dict[str, Any]], *,
                    feedback_buttons: bool = True) -> str | None:
    """Why Slack would refuse these blocks (the rules the bot's blocks meet), or None;
    without `feedback_buttons`, that element is refused too."""
    if len(blocks) > 50:
        return "more than 50 blocks"
    for block in blocks:
        kind = block.get("type")
        if kind == "section":
            text = block.get("text") or {}
            if text.get("type") not in ("mrkdwn", "plain_text") or not text.get("text"):
                return "section without text"
            if len(text["text"]) > 3000:
                return "section text over 3000 characters"
        elif kind in _ELEMENTS:
            elements = block.get("elements") or []
            if not elements or len(elements) > (25 if kind == "actions" else 5):
                return f"{kind}: bad number of elements"
            ids = [e.get("action_id") for e in elements]
            if len(set(ids)) != len(ids):
                return f"{kind}: action_ids not unique"
            if any(e.get("type") not in _ELEMENTS[kind] for e in elements):
                return f"{kind}: an element that does not go there"
            if not feedback_buttons and any(e.get("type") == "feedback_buttons"
                                            for e in elements):
                return f"{kind}: feedback_buttons is not available"
        elif kind not in ("markdown", "rich_text", "context", "divider", "header"):
            return f"unknown block type {kind}"
    return None


def _json(value: Any) -> Any:
    """A JSON argument as Slack takes it: inline in a JSON body, or a string in a form."""
    return json.loads(value) if isinstance(value, str) else value


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true")


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = WAIT_S,
                     interval: float = 0.02) -> None:
    """Poll `check` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


# ----- requests as Slack sends them -----------------------------------------------------------
def sign(body: str, timestamp: int | None = None,
         secret: str = SIGNING_SECRET) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), f"v0:{stamp}:{body}".encode(), hashlib.sha256)
    return {"X-Slack-Request-Timestamp": stamp, "X-Slack-Signature": f"v0={digest.hexdigest()}"}


_event_ids = itertools.count(1)


def event_callback(event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    return {
        "token": "legacy", "team_id": TEAM, "api_app_id": "A1", "type": "event_callback",
        "event": {"event_ts": event.get("ts"), **event},
        "event_id": event_id or f"Ev{next(_event_ids):08d}", "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True}],
    }


def mention(channel: str, ts: str, text: str, *, user: str = "U1",
            thread_ts: str | None = None) -> dict[str, Any]:
    event = {"type": "app_mention", "user": user, "text": f"<@{BOT_USER}> {text}",
             "ts": ts, "channel": channel}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def message(channel: str, ts: str, text: str, *, user: str | None = "U1",
            thread_ts: str | None = None, channel_type: str = "channel",
            **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "message", "text": text, "ts": ts, "channel": channel,
                             "channel_type": channel_type, **extra}
    if user is not None:
        event["user"] = user
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event


def command_form(text: str, *, channel: str = "C1", user: str = "U1",
                 response_url: str = "http://127.0.0.1:1/unused") -> str:
    return urlencode({
        "token": "legacy", "team_id": TEAM, "team_domain": "test", "channel_id": channel,
        "channel_name": "general", "user_id": user, "user_name": "taro", "command": "/rinna",
        "text": text, "api_app_id": "A1", "response_url": response_url,
        "trigger_id": "1.2.3",
    })




def interaction_form(payload: dict[str, Any]) -> str:
    """An interactivity request (shortcut, block_actions) as Slack posts it: a form whose
    `payload` is the JSON."""
    return urlencode({"payload": json.dumps(payload)})


_triggers = itertools.count(1)


def message_shortcut(channel: str, message: dict[str, Any], *, user: str = "U1",
                     callback_id: str = "rinna_ask") -> dict[str, Any]:
    return {
        "type": "message_action", "token": "legacy", "callback_id": callback_id,
        "trigger_id": f"{next(_triggers)}.1.shortcut", "action_ts": f"{time.time():.6f}",
        "team": {"id": TEAM, "domain": "test"}, "user": {"id": user, "name": f"name-{user}"},
        "channel": {"id": channel, "name": "general"}, "is_enterprise_install": False,
        "message_ts": message["ts"], "message": message,
        "response_url": "http://127.0.0.1:1/unused",
    }


def block_action(channel: str, message: dict[str, Any], action_id: str, value: str, *,
                 user: str = "U1", response_url: str = "http://127.0.0.1:1/unused"
                 ) -> dict[str, Any]:
    """A button press on a bot message (`message`: its ts, text, blocks, thread_ts)."""
    action: dict[str, Any] = {"action_id": action_id, "block_id": "rinna_controls",
                              "value": value, "type": "button",
                              "action_ts": f"{time.time():.6f}"}
    if action_id == "rinna_feedback":
        action["type"] = "feedback_buttons"
    return {
        "type": "block_actions", "token": "legacy", "api_app_id": "A1",
        "trigger_id": f"{next(_triggers)}.1.action",
        "team": {"id": TEAM, "domain": "test"},
        "user": {"id": user, "username": f"name-{user}", "team_id": TEAM},
        "container": {"type": "message", "message_ts": message["ts"], "channel_id": channel,
                      "is_ephemeral": False, "thread_ts": message.get("thread_ts")},
        "channel": {"id": channel, "name": "general"}, "message": message,
        "response_url": response_url, "actions": [action],
    }


def assistant_thread_started(channel: str, thread_ts: str, *, user: str = "U1"
                             ) -> dict[str, Any]:
    return {"type": "assistant_thread_started", "event_ts": thread_ts,
            "assistant_thread": {"user_id": user, "channel_id": channel,
                                 "thread_ts": thread_ts,
                                 "context": {"channel_id": "C1", "team_id": TEAM,
                                             "enterprise_id": None}}}


def slack_service(chat: ChatService, settings: Settings, *, status: StatusSource | None = None,
                  host: str = "127.0.0.1") -> SlackService:
    """The Slack app over a front door built as the service builds it (one per process,
    bot/service/assembly.py), on 127.0.0.1."""
    return build_slack_service(FrontDoor.from_settings(chat, settings, status=status), settings,
                               host=host)

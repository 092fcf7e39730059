"""Test support for the Discord adapter: a scripted generator, and a local fake of Discord's
REST API and gateway for wire tests (a real `bot.start()` over HTTP and a websocket on
127.0.0.1). No network: everything listens on the loopback interface only."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakes import ScriptedGenerator as _Shared

# ----- a generator that says what the test tells it ------------------------------------------


class ScriptedGenerator(_Shared):
    """The shared scripted generator with Discord tests' default reply."""

    def __init__(self) -> None:
        super().__init__(default="はい。")


def sentences(total_chars: int) -> str:
    """Whole Japanese sentences, about `total_chars` characters in all (never more)."""
    sentence = "これはとても長い回答の一文です。"
    return sentence * max(1, total_chars // len(sentence))


# ----- a fake Discord: REST + gateway on 127.0.0.1 -------------------------------------------

BOT_ID = 900000000000000001
APP_ID = 900000000000000002
GUILD_ID = 900000000000000010
CHANNEL_ID = 900000000000000020
USER_ID = 900000000000000030
TIMESTAMP = "2026-01-01T00:00:00.000000+00:00"


def _user(user_id: int, name: str, bot: bool = False) -> dict[str, Any]:
    return {"id": str(user_id), "username": name, "global_name": name, "discriminator": "0",
            "avatar": None, "bot": bot}


@dataclass
class RecordedRequest:
    method: str
    path: str
    body: Any


@dataclass
class FakeDiscord:
    """Discord's REST API and gateway, as much as the bot uses, with every request recorded."""

    requests: list[RecordedRequest] = field(default_factory=list)
    identified: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    base_url: str = ""
    gateway_url: str = ""
    _ids: itertools.count = field(default_factory=lambda: itertools.count(900000000000001000))
    _ws: web.WebSocketResponse | None = None
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    identify: dict[str, Any] = field(default_factory=dict)  # the bot's IDENTIFY payload
    reject_token: bool = False  # answer the login with 401, as Discord does for a bad token
    # Sends that create their message and then answer 500 (Discord's retry is the client's)
    fail_after_create: int = 0
    nonces: dict[tuple[int, str], int] = field(default_factory=dict)  # enforce_nonce: (channel, nonce) -> id

    # --- lifecycle
    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/api/v10"
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway"

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, condition: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Wait until `condition()` is truthy; re-checked whenever a request arrives."""
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met; requests: {self.requests}")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=min(remaining, 0.5))
            except TimeoutError:
                pass
        return result

    def _record(self, method: str, path: str, body: Any) -> None:
        self.requests.append(RecordedRequest(method, path, body))
        self.changed.set()

    # --- REST
    async def _rest(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["path"]
        body = await request.json() if request.can_read_body else None
        self._record(request.method, path, body)
        handler = self._route(request.method, path)
        if self.reject_token and path == "/users/@me":
            return self._json({"message": "401: Unauthorized", "code": 0}, status=401)
        if handler is None:
            return self._json({"message": "404: Not Found", "code": 0}, status=404)
        if (self.fail_after_create and request.method == "POST"
                and path.endswith("/messages") and path.startswith("/channels/")):
            self.fail_after_create -= 1
            handler(path, body)  # created; the answer is lost
            return self._json({"message": "500: Internal Server Error", "code": 0}, status=500)
        result = handler(path, body)
        if result is None:
            return web.Response(status=204)
        return self._json(result)

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        # discord.py parses JSON only when the Content-Type is exactly application/json.
        return web.Response(body=json.dumps(data).encode(), status=status,
                            headers={"Content-Type": "application/json"})

    def _route(self, method: str, path: str) -> Callable[[str, Any], Any] | None:
        parts = path.strip("/").split("/")
        if method == "GET" and path == "/users/@me":
            return lambda *_: _user(BOT_ID, "rinna", bot=True)
        if method == "GET" and path == "/oauth2/applications/@me":
            return lambda *_: self._application()
        if method == "PUT" and parts[:1] == ["applications"] and parts[-1] == "commands":
            return lambda _path, body: [
                {**command, "id": str(next(self._ids)), "application_id": str(APP_ID),
                 "version": "1"} for command in body]
        if parts[:1] == ["channels"]:
            channel_id = int(parts[1])
            if method == "POST" and parts[2:] == ["typing"]:
                return lambda *_: None
            if method == "POST" and parts[2:] == ["messages"]:
                return lambda _path, body: self._create(channel_id, body)
            if method == "PATCH" and parts[2] == "messages" and len(parts) == 4:
                return lambda _path, body: self._edit(channel_id, int(parts[3]), body)
            if method == "POST" and parts[2] == "messages" and parts[4:] == ["threads"]:
                return lambda _path, body: self._thread(channel_id, int(parts[3]), body["name"])
        return None

    def _create(self, channel_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """A message sent by the bot; a repeated nonce with enforce_nonce returns the first."""
        nonce = body.get("nonce")
        if nonce is not None and body.get("enforce_nonce"):
            earlier = self.nonces.get((channel_id, str(nonce)))
            if earlier is not None:
                return self.messages[earlier]
        message = self._message(channel_id, body["content"])
        if nonce is not None:
            message["nonce"] = str(nonce)
            self.nonces[(channel_id, str(nonce))] = int(message["id"])
        return message

    @staticmethod
    def _application() -> dict[str, Any]:
        return {"id": str(APP_ID), "name": "rinna", "description": "", "icon": None,
                "bot_public": True, "bot_require_code_grant": False,
                "owner": _user(USER_ID, "owner"), "verify_key": "00", "flags": 0}

    def _message(self, channel_id: int, content: str, author: dict[str, Any] | None = None,
                 message_id: int | None = None, mentions: Sequence[dict[str, Any]] = ()
                 ) -> dict[str, Any]:
        message = {
            "id": str(message_id or next(self._ids)), "channel_id": str(channel_id),
            "guild_id": str(GUILD_ID), "author": author or _user(BOT_ID, "rinna", bot=True),
            "content": content, "timestamp": TIMESTAMP, "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": list(mentions), "mention_roles": [],
            "attachments": [], "embeds": [], "pinned": False, "type": 0, "flags": 0,
        }
        self.messages[int(message["id"])] = message
        return message

    def _edit(self, channel_id: int, message_id: int, body: dict[str, Any]) -> dict[str, Any]:
        message = (self.messages.get(message_id)
                   or self._message(channel_id, "", message_id=message_id))
        message.update(content=body.get("content", message["content"]), edited_timestamp=TIMESTAMP)
        return message

    def _thread(self, channel_id: int, message_id: int, name: str) -> dict[str, Any]:
        return {"id": str(message_id), "type": 11, "guild_id": str(GUILD_ID),
                "parent_id": str(channel_id), "owner_id": str(BOT_ID), "name": name,
                "message_count": 0, "member_count": 1, "rate_limit_per_user": 0, "flags": 0,
                "thread_metadata": {"archived": False, "auto_archive_duration": 1440,
                                    "archive_timestamp": TIMESTAMP, "locked": False}}

    def posted_in(self, channel_id: int) -> list[dict[str, Any]]:
        """Messages the bot has in a channel, with their latest content."""
        return [m for m in self.messages.values()
                if m["channel_id"] == str(channel_id) and m["author"]["id"] == str(BOT_ID)]

    # --- gateway
    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._ws = ws
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": 45000}})
        async for frame in ws:
            if frame.type is not WSMsgType.TEXT:
                break
            payload = json.loads(frame.data)
            if payload["op"] == 1:  # heartbeat
                await ws.send_json({"op": 11})
            elif payload["op"] == 2:  # identify
                self.identify = payload["d"]
                await self._dispatch("READY", self._ready())
                await self._dispatch("GUILD_CREATE", self._guild())
                self.identified.set()
        return ws

    async def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        assert self._ws is not None
        await self._ws.send_json({"op": 0, "t": event, "s": next(self._seq), "d": data})

    def _ready(self) -> dict[str, Any]:
        return {"v": 10, "user": _user(BOT_ID, "rinna", bot=True), "session_id": "fake-session",
                "resume_gateway_url": self.gateway_url, "guilds": [
                    {"id": str(GUILD_ID), "unavailable": True}],
                "application": {"id": str(APP_ID), "flags": 0}}

    def _guild(self) -> dict[str, Any]:
        everyone = {"id": str(GUILD_ID), "name": "@everyone", "permissions": "1071698660929",
                    "position": 0, "color": 0, "hoist": False, "managed": False,
                    "mentionable": False}
        channel = {"id": str(CHANNEL_ID), "type": 0, "guild_id": str(GUILD_ID),
                   "name": "general", "position": 0, "permission_overwrites": [], "nsfw": False,
                   "parent_id": None, "topic": None, "last_message_id": None,
                   "rate_limit_per_user": 0}
        return {"id": str(GUILD_ID), "name": "Test Guild", "icon": None, "owner_id": str(USER_ID),
                "roles": [everyone], "emojis": [], "stickers": [], "features": [],
                "member_count": 2, "members": [], "channels": [channel], "threads": [],
                "voice_states": [], "presences": [], "large": False, "unavailable": False,
                "joined_at": TIMESTAMP, "verification_level": 0,
                "default_message_notifications": 0, "explicit_content_filter": 0,
                "mfa_level": 0, "system_channel_id": None, "premium_tier": 0,
                "preferred_locale": "ja", "nsfw_level": 0}

    async def user_says(self, content: str, *, mention_bot: bool) -> int:
        """A person posts in #general; returns the message id."""
        author = _user(USER_ID, "alice")
        text = f"<@{BOT_ID}> {content}" if mention_bot else content
        mentions = [_user(BOT_ID, "rinna", bot=True)] if mention_bot else []
        message = self._message(CHANNEL_ID, text, author=author, mentions=mentions)
        message["member"] = {"roles": [], "joined_at": TIMESTAMP, "deaf": False, "mute": False,
                             "flags": 0}
        await self._dispatch("MESSAGE_CREATE", message)
        return int(message["id"])

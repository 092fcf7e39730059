"""Test support for the Discord adapter: a scripted generator, and a local fake of Discord's
REST API and gateway for wire tests (a real `bot.start()` over HTTP and a websocket on
127.0.0.1). No network: everything listens on the loopback interface only."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from adapters.discord_bot import RinnaDiscordBot, build_discord_bot
from bot.config import Settings
from bot.core.chat import ChatService
from bot.core.front_door import FrontDoor
from bot.core.status import StatusSource
from tests.fakes import ScriptedGenerator as _Shared
from tests.file_fakes import FakeFile, FileShelf

# ----- a generator that says what the test tells it ------------------------------------------


class ScriptedGenerator(_Shared):
    """The shared scripted generator with Discord tests' default reply."""

    def __init__(self) -> None:
        super().__init__(default="はい。")


def sentences(total_chars: int) -> str:
    """Whole Japanese sentences, about `total_chars` characters in all (never more)."""
    sentence = "これはとても長い回答の一文です。"
    return sentence * max(1, total_chars // len(sentence))


class EndlessGenerator:
    """A generator that writes until it is stopped: one character per `pace_s` (how fast the
    text grows, not a synchronisation), counting the streams running now and the ones whose
    consumer closed them early (a stopped answer: its row left the batch)."""

    def __init__(self, pace_s: float = 0.02, text: str = "あいうえお") -> None:
        self.pace_s = pace_s
        self.text = text
        self.running = 0
        self.started = 0
        self.closed_early = 0
        self.prompts: list[str] = []

    async def stream(self, prompt: str, params: Any = None, *, owner: str | None = None,
                     on_wait: Any = None) -> AsyncIterator[str]:
        self.prompts.append(prompt)
        self.running += 1
        self.started += 1
        try:
            for index in itertools.count():
                await asyncio.sleep(self.pace_s)
                yield self.text[index % len(self.text)]
        except (GeneratorExit, asyncio.CancelledError):
            self.closed_early += 1
            raise
        finally:
            self.running -= 1

    async def aclose(self) -> None:
        return None


# ----- a fake Discord: REST + gateway on 127.0.0.1 -------------------------------------------

BOT_ID = 900000000000000001
APP_ID = 900000000000000002
GUILD_ID = 900000000000000010
CHANNEL_ID = 900000000000000020
USER_ID = 900000000000000030
OTHER_USER_ID = 900000000000000031
FORUM_ID = 900000000000000040
TIMESTAMP = "2026-01-01T00:00:00.000000+00:00"
EPHEMERAL = 1 << 6  # message flag: only the person who used the interaction sees it
MANAGE_MESSAGES = 1 << 13
MEMBER_PERMISSIONS = 1071698660929 & ~MANAGE_MESSAGES  # what @everyone may do, not moderate
ALREADY_ACKNOWLEDGED = 40060  # Discord's code for a second response to one interaction
THREAD_ALREADY_CREATED = 160004  # Discord's code for a second thread on one message


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
    identifies: list[dict[str, Any]] = field(default_factory=list)  # every one, in order
    # A sharded bot's open websockets by shard id: a server's events go to its shard, as
    # Discord routes them ((guild id >> 22) % shard count), the rest to shard 0
    _shards: dict[int, web.WebSocketResponse] = field(default_factory=dict)
    _shard_count: int = 0
    reject_token: bool = False  # answer the login with 401, as Discord does for a bad token
    login_gate: asyncio.Event | None = None  # the login waits for it before being answered
    # Sends that create their message and then answer 500 (Discord's retry is the client's)
    fail_after_create: int = 0
    nonces: dict[tuple[int, str], int] = field(default_factory=dict)  # enforce_nonce: (channel, nonce) -> id
    # Interactions: id -> the INTERACTION_CREATE payload; id -> its callback body (one allowed);
    # id -> the message its response created (the "@original" of its webhook token).
    interactions: dict[int, dict[str, Any]] = field(default_factory=dict)
    callbacks: dict[int, dict[str, Any]] = field(default_factory=dict)
    originals: dict[int, int] = field(default_factory=dict)
    # Channels beyond #general (threads, forum posts, the forum itself): id -> channel object
    channels: dict[int, dict[str, Any]] = field(default_factory=dict)
    _events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # Attachments, served as Discord's CDN serves them (no token: the URLs are signed)
    files: FileShelf = field(default_factory=lambda: FileShelf("/attachments"))

    # --- lifecycle
    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/api/v10/{path:.*}", self._rest)
        self.files.route(app)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}/api/v10"
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway"
        self.files.base = f"http://127.0.0.1:{port}"

    def attach(self, name: str, data: bytes = b"", *,
               content_type: str | None = "text/plain; charset=utf-8",
               **serve: Any) -> dict[str, Any]:
        """A file a person attaches: served, and described as a message's `attachments`
        entry describes it (Discord turns a long paste into `message.txt` this way)."""
        attachment_id = next(self._ids)
        size = serve.pop("size", serve.get("endless") or len(data))
        url = self.files.add(f"{CHANNEL_ID}/{attachment_id}/{name}",
                             FakeFile(data, content_type or "application/octet-stream",
                                      **serve))
        entry: dict[str, Any] = {"id": str(attachment_id), "filename": name, "size": size,
                                 "url": url + "?ex=1&is=2&hm=signed", "proxy_url": url}
        if content_type is not None:
            entry["content_type"] = content_type
        return entry

    async def close(self) -> None:
        self.files.released.set()
        for ws in {id(w): w for w in (self._ws, *self._shards.values()) if w}.values():
            await ws.close()
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
        handler = self._route(request.method, path, request.query.get("before"))
        if self.login_gate is not None and path == "/users/@me":
            await self.login_gate.wait()
        if self.reject_token and path == "/users/@me":
            return self._json({"message": "401: Unauthorized", "code": 0}, status=401)
        if handler is None:
            return self._json({"message": "404: Not Found", "code": 0}, status=404)
        if request.method == "GET" and handler(path, body) is None:
            return self._json({"message": "Unknown", "code": 10003}, status=404)
        if (self.fail_after_create and request.method == "POST"
                and path.endswith("/messages") and path.startswith("/channels/")):
            self.fail_after_create -= 1
            handler(path, body)  # created; the answer is lost
            return self._json({"message": "500: Internal Server Error", "code": 0}, status=500)
        result = handler(path, body)
        while self._events and self._ws is not None:  # what Discord also says on the gateway
            await self._dispatch(*self._events.pop(0))
        if isinstance(result, _Refusal):
            return self._json({"message": result.message, "code": result.code},
                              status=result.status)
        if result is None:
            return web.Response(status=204)
        return self._json(result)

    @staticmethod
    def _json(data: Any, status: int = 200) -> web.Response:
        # discord.py parses JSON only when the Content-Type is exactly application/json.
        return web.Response(body=json.dumps(data).encode(), status=status,
                            headers={"Content-Type": "application/json"})

    def _route(self, method: str, path: str,
               before: str | None = None) -> Callable[[str, Any], Any] | None:
        parts = path.strip("/").split("/")
        if method == "GET" and path == "/users/@me":
            return lambda *_: _user(BOT_ID, "rinna", bot=True)
        if method == "GET" and path == "/oauth2/applications/@me":
            return lambda *_: self._application()
        if method == "PUT" and parts[:1] == ["applications"] and parts[-1] == "commands":
            return lambda _path, body: [
                {"description": "", **command, "id": str(800000000000000000 + index),
                 "application_id": str(APP_ID), "version": "1"}
                for index, command in enumerate(body)]
        if method == "POST" and parts[:1] == ["interactions"] and parts[3:] == ["callback"]:
            return lambda _path, body: self._callback(int(parts[1]), body)
        if parts[:1] == ["webhooks"] and len(parts) >= 3:
            interaction_id = self._by_token(parts[2])
            if method == "POST" and len(parts) == 3:
                return lambda _path, body: self._followup(interaction_id, body)
            if parts[3:4] == ["messages"] and len(parts) == 5:
                message_id = (self.originals.get(interaction_id, 0) if parts[4] == "@original"
                              else int(parts[4]))
                if method == "PATCH":
                    return lambda _path, body: self._edit(0, message_id, body)
                if method == "GET":
                    return lambda *_: self.messages.get(message_id)
            return None
        if parts[:1] == ["channels"]:
            channel_id = int(parts[1])
            if method == "GET" and len(parts) == 2:
                return lambda *_: self.channels.get(channel_id)
            if method == "GET" and parts[2:] == ["messages"]:
                return lambda *_: self._history(channel_id, before)
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
        message = self._message(channel_id, body.get("content", ""))
        message["components"] = _components(body.get("components"))
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
            "components": [],
        }
        self.messages[int(message["id"])] = message
        return message

    def _edit(self, channel_id: int, message_id: int, body: dict[str, Any]) -> dict[str, Any]:
        message = (self.messages.get(message_id)
                   or self._message(channel_id, "", message_id=message_id))
        message.update(content=body.get("content", message["content"]), edited_timestamp=TIMESTAMP)
        if "components" in body:  # absent: unchanged; [] or null: removed
            message["components"] = _components(body["components"])
        return message

    def _thread(self, channel_id: int, message_id: int, name: str) -> Any:
        if message_id in self.channels:  # Discord allows one thread per message
            return _Refusal(400, THREAD_ALREADY_CREATED,
                            "A thread has already been created for this message")
        thread = self.thread_payload(message_id, channel_id, name, owner_id=BOT_ID)
        self.channels[message_id] = thread
        self._events.append(("THREAD_CREATE", {**thread, "newly_created": True}))
        return thread

    @staticmethod
    def thread_payload(thread_id: int, parent_id: int, name: str, *,
                       owner_id: int = USER_ID) -> dict[str, Any]:
        return {"id": str(thread_id), "type": 11, "guild_id": str(GUILD_ID),
                "parent_id": str(parent_id), "owner_id": str(owner_id), "name": name,
                "message_count": 0, "member_count": 1, "rate_limit_per_user": 0, "flags": 0,
                "thread_metadata": {"archived": False, "auto_archive_duration": 1440,
                                    "archive_timestamp": TIMESTAMP, "locked": False}}

    def _history(self, channel_id: int, before: str | None = None) -> list[dict[str, Any]]:
        """GET /channels/{id}/messages: newest first, those older than `before` when given
        (the fake's channels are short, so one page holds them all)."""
        below = int(before) if before else None
        return sorted((m for m in self.messages.values()
                       if m["channel_id"] == str(channel_id) and not m["flags"] & EPHEMERAL
                       and (below is None or int(m["id"]) < below)),
                      key=lambda m: int(m["id"]), reverse=True)

    def posted_in(self, channel_id: int) -> list[dict[str, Any]]:
        """Messages the bot has in a channel, with their latest content (not ephemeral ones)."""
        return [m for m in self.messages.values()
                if m["channel_id"] == str(channel_id) and m["author"]["id"] == str(BOT_ID)
                and not m["flags"] & EPHEMERAL]

    # --- interactions (the bot's answers to them)
    def _by_token(self, token: str) -> int:
        return next((i for i, d in self.interactions.items() if d["token"] == token), 0)

    def _callback(self, interaction_id: int, body: dict[str, Any]) -> Any:
        """POST /interactions/{id}/{token}/callback (with_response=1): one response per
        interaction; 4 (message) and 5 (deferred, "thinking") create the original response
        message, 7 edits the component's message, 6 acknowledges a component silently."""
        interaction = self.interactions.get(interaction_id)
        if interaction is None:
            return _Refusal(404, 10062, "Unknown interaction")
        if interaction_id in self.callbacks:
            return _Refusal(400, ALREADY_ACKNOWLEDGED,
                            "Interaction has already been acknowledged.")
        self.callbacks[interaction_id] = body
        kind, data = body["type"], body.get("data") or {}
        channel_id = int(interaction["channel_id"])
        result: dict[str, Any] = {"id": str(interaction_id), "type": interaction["type"],
                                  "response_message_loading": kind == 5,
                                  "response_message_ephemeral": bool(
                                      data.get("flags", 0) & EPHEMERAL)}
        resource: dict[str, Any] = {"type": kind}
        if kind in (4, 5):
            message = self._message(channel_id, data.get("content", ""))
            message["flags"] = data.get("flags", 0) & EPHEMERAL
            message["components"] = _components(data.get("components"))
            message["interaction_id"] = str(interaction_id)
            self.originals[interaction_id] = int(message["id"])
            result["response_message_id"] = message["id"]
            resource["message"] = message
        elif kind == 7:
            target = int(interaction["message"]["id"])
            resource["message"] = self._edit(channel_id, target, data)
            result["response_message_id"] = str(target)
        self.changed.set()
        return {"interaction": result, "resource": resource}

    def _followup(self, interaction_id: int, body: dict[str, Any]) -> dict[str, Any]:
        interaction = self.interactions[interaction_id]
        message = self._message(int(interaction["channel_id"]), body.get("content", ""))
        message["flags"] = body.get("flags", 0) & EPHEMERAL
        message["components"] = _components(body.get("components"))
        message["interaction_id"] = str(interaction_id)
        return message

    def response_to(self, interaction_id: int) -> dict[str, Any] | None:
        """What the person who used the interaction sees: its original response message
        (ephemeral or not), or None before the bot answered it (or after a silent ack)."""
        message_id = self.originals.get(interaction_id)
        return None if message_id is None else self.messages[message_id]

    def replies_to(self, interaction_id: int) -> list[dict[str, Any]]:
        """The original response and every follow-up of an interaction, oldest first."""
        return [m for m in self.messages.values()
                if m.get("interaction_id") == str(interaction_id)]

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
                self.identifies.append(payload["d"])
                shard, self._shard_count = payload["d"].get("shard", [0, 0])
                if self._shard_count:
                    self._shards[shard] = ws
                mine = not self._shard_count or self._guild_shard() == shard
                ready = self._ready(with_guild=mine)
                if self._shard_count:  # Discord names the shard in a sharded READY
                    ready["shard"] = [shard, self._shard_count]
                await ws.send_json({"op": 0, "t": "READY", "s": next(self._seq), "d": ready})
                if mine:
                    await self._dispatch("GUILD_CREATE", self._guild())
                self.identified.set()
                self.changed.set()
        return ws

    def _guild_shard(self) -> int:
        return (GUILD_ID >> 22) % self._shard_count

    async def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        ws = self._ws
        if self._shard_count:  # the test's server lives on one shard; a DM on shard 0
            in_guild = "guild_id" in data or event == "GUILD_CREATE"
            ws = self._shards.get(self._guild_shard() if in_guild else 0)
        assert ws is not None, "no gateway connection for this event's shard"
        await ws.send_json({"op": 0, "t": event, "s": next(self._seq), "d": data})

    def _ready(self, with_guild: bool = True) -> dict[str, Any]:
        guilds = [{"id": str(GUILD_ID), "unavailable": True}] if with_guild else []
        return {"v": 10, "user": _user(BOT_ID, "rinna", bot=True), "session_id": "fake-session",
                "resume_gateway_url": self.gateway_url, "guilds": guilds,
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
                "member_count": 2, "members": [],
                "channels": [channel, *(c for c in self.channels.values() if c["type"] != 11)],
                "threads": [c for c in self.channels.values() if c["type"] == 11],
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

    # --- what people do: interactions, forums
    async def _interact(self, kind: int, data: dict[str, Any], channel_id: int, *,
                        user_id: int, name: str, permissions: int,
                        message: dict[str, Any] | None = None) -> int:
        """Deliver an INTERACTION_CREATE as Discord does (in a guild: `member` with the
        person's resolved `permissions` in that channel); returns the interaction id."""
        interaction_id = next(self._ids)
        payload: dict[str, Any] = {
            "id": str(interaction_id), "application_id": str(APP_ID), "type": kind,
            "data": data, "guild_id": str(GUILD_ID), "channel_id": str(channel_id),
            "channel": self.channel_payload(channel_id),
            "member": {**_member(), "user": _user(user_id, name),
                       "permissions": str(permissions)},
            "token": f"token-{interaction_id}", "version": 1, "app_permissions": "0",
            "locale": "ja", "guild_locale": "ja", "entitlements": [],
            "authorizing_integration_owners": {"0": str(GUILD_ID)}, "context": 0,
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if message is not None:
            payload["message"] = message
        self.interactions[interaction_id] = payload
        await self._dispatch("INTERACTION_CREATE", payload)
        return interaction_id

    async def redeliver(self, interaction_id: int) -> None:
        """The same INTERACTION_CREATE again (a gateway replay after a resume)."""
        await self._dispatch("INTERACTION_CREATE", self.interactions[interaction_id])

    def channel_payload(self, channel_id: int) -> dict[str, Any]:
        if channel_id in self.channels:
            return self.channels[channel_id]
        return {"id": str(channel_id), "type": 0, "guild_id": str(GUILD_ID), "name": "general",
                "position": 0, "permission_overwrites": [], "nsfw": False, "parent_id": None}

    async def press(self, message_id: int, custom_id: str, *, user_id: int = USER_ID,
                    name: str = "alice", permissions: int = MEMBER_PERMISSIONS) -> int:
        """A person clicks the button `custom_id` on a message (type 3, component type 2)."""
        message = self.messages[message_id]
        assert any(c.get("custom_id") == custom_id for row in message["components"]
                   for c in row.get("components", ())), (custom_id, message["components"])
        return await self._interact(3, {"custom_id": custom_id, "component_type": 2},
                                    int(message["channel_id"]), user_id=user_id, name=name,
                                    permissions=permissions, message=message)

    async def slash(self, name: str, channel_id: int = CHANNEL_ID, *,
                    options: dict[str, str] | None = None, user_id: int = USER_ID,
                    user_name: str = "alice", permissions: int = MEMBER_PERMISSIONS) -> int:
        """A chat-input command (type 2, command type 1) with string options."""
        data: dict[str, Any] = {"id": str(self.command_id(name, 1)), "name": name, "type": 1,
                                "options": [{"name": k, "type": 3, "value": v}
                                            for k, v in (options or {}).items()]}
        return await self._interact(2, data, channel_id, user_id=user_id, name=user_name,
                                    permissions=permissions)

    async def message_command(self, name: str, target_id: int, *, user_id: int = USER_ID,
                              user_name: str = "alice",
                              permissions: int = MEMBER_PERMISSIONS) -> int:
        """A message context-menu command on message `target_id` (type 2, command type 3,
        `target_id` and the message in `resolved.messages`), used in its channel."""
        target = self.messages[target_id]
        data = {"id": str(self.command_id(name, 3)), "name": name, "type": 3,
                "target_id": str(target_id), "resolved": {"messages": {str(target_id): target}}}
        return await self._interact(2, data, int(target["channel_id"]), user_id=user_id,
                                    name=user_name, permissions=permissions)

    def command_id(self, name: str, kind: int) -> int:
        """The id Discord gave the command when the bot synced it (the last sync wins)."""
        for request in reversed(self.requests):
            if request.method == "PUT" and request.path.endswith("/commands"):
                for index, command in enumerate(request.body):
                    if command["name"] == name and command.get("type", 1) == kind:
                        return 800000000000000000 + index
        raise AssertionError(f"command {name!r} (type {kind}) was never synced")

    async def person_says(self, channel_id: int, content: str, *, user_id: int = USER_ID,
                          name: str = "alice", mention_bot: bool = False,
                          message_id: int | None = None,
                          attachments: Sequence[dict[str, Any]] = ()) -> int:
        """A person posts in any channel or thread the fake knows; returns the message id.
        `attachments`: entries made by `attach`."""
        text = f"<@{BOT_ID}> {content}" if mention_bot else content
        mentions = [_user(BOT_ID, "rinna", bot=True)] if mention_bot else []
        message = self._message(channel_id, text, author=_user(user_id, name),
                                mentions=mentions, message_id=message_id)
        message["attachments"] = list(attachments)
        message["member"] = _member()
        await self._dispatch("MESSAGE_CREATE", message)
        return int(message["id"])

    async def person_edits(self, message_id: int, content: str, *,
                           edited: str = "2026-01-01T00:01:00.000000+00:00",
                           embeds: Sequence[dict[str, Any]] = ()) -> None:
        """A person edits their message (MESSAGE_UPDATE, as Discord sends it: the whole
        message, `edited_timestamp` set); with `edited` None, an update that is no edit (the
        embeds of an unfurled link)."""
        message = self.messages[message_id]
        message.update({"content": content, "edited_timestamp": edited,
                        "embeds": list(embeds)})
        await self._dispatch("MESSAGE_UPDATE", {**message, "member": _member()})

    def add_forum(self, name: str = "questions") -> int:
        """A forum channel (type 15) in the guild; call before the bot connects."""
        self.channels[FORUM_ID] = {
            "id": str(FORUM_ID), "type": 15, "guild_id": str(GUILD_ID), "name": name,
            "position": 1, "permission_overwrites": [], "nsfw": False, "parent_id": None,
            "topic": None, "last_message_id": None, "rate_limit_per_user": 0, "flags": 0,
            "available_tags": [], "default_reaction_emoji": None, "default_sort_order": None,
            "default_forum_layout": 0, "default_thread_rate_limit_per_user": 0}
        return FORUM_ID

    async def forum_post(self, forum_id: int, title: str, starter: str, *,
                         user_id: int = USER_ID, name: str = "alice") -> int:
        """A person opens a post in a forum: a thread whose id is its starter message's id,
        the starter message in it (no mention), as Discord sends them."""
        post_id = next(self._ids)
        thread = self.thread_payload(post_id, forum_id, title, owner_id=user_id)
        thread["newly_created"] = True
        self.channels[post_id] = thread
        await self._dispatch("THREAD_CREATE", thread)
        await self.person_says(post_id, starter, user_id=user_id, name=name, message_id=post_id)
        return post_id


@dataclass(frozen=True)
class _Refusal:
    """A Discord error answer from a route."""

    status: int
    code: int
    message: str


def _member() -> dict[str, Any]:
    return {"roles": [], "joined_at": TIMESTAMP, "deaf": False, "mute": False, "flags": 0}


def _components(rows: Any) -> list[dict[str, Any]]:
    """Components as Discord stores them (null and absent are both "none")."""
    return list(rows or [])


@asynccontextmanager
async def connected(fake: FakeDiscord, bot: Any) -> AsyncIterator[Any]:
    """`bot.start()` against the fake until the block ends; yields the bot once it is ready."""
    running = asyncio.create_task(bot.start("fake-token"))
    try:
        await fake.wait_for(lambda: bot.is_ready() or running.done())
        assert bot.is_ready(), running
        yield bot
    finally:
        await bot.close()
        await asyncio.wait_for(running, timeout=10)


def discord_bot(chat: ChatService, settings: Settings, *, status: StatusSource | None = None,
                **options: Any) -> RinnaDiscordBot:
    """The Discord client over a front door built as the service builds it (one per process,
    bot/service/assembly.py); `options` go to build_discord_bot."""
    return build_discord_bot(FrontDoor.from_settings(chat, settings, status=status), settings,
                             **options)

"""The service that `rinna-bot run` starts: the Bolt app served over Socket Mode
(SLACK_APP_TOKEN) or HTTP (SLACK_SIGNING_SECRET, each request's signature checked first)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.authorization.async_single_team_authorization import (
    AsyncSingleTeamAuthorization,
)
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from adapters import slack_shapes
from adapters.slack_api import PLATFORM, SlackApi, SlackConnectError, UserNames, describe
from adapters.slack_app import SlackHandlers, register
from adapters.slack_files import slack_fetcher
from bot.core.access import AccessPolicy
from bot.core.chat import ChatService
from bot.config import Settings
from bot.conversation import ReplySink
from bot.errors import ConfigError
from bot.ports.records import Delivery
from bot.core.status import StatusSource

log = logging.getLogger(__name__)

EVENTS_PATH = "/slack/events"
AUTH_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked",
                         "token_expired", "not_allowed_token_type"})
SOCKET_CONNECT_TIMEOUT_S = 60.0
CLOSE_GRACE_S = 5.0
SIGNATURE_MAX_AGE_S = 5 * 60
MAX_TIMESTAMP_DIGITS = 16  # Slack sends seconds since the epoch: 10 digits


# ----- the service that `rinna-bot run` starts ----------------------------------------------
class SlackService:
    """The Bolt app served over Socket Mode (SLACK_APP_TOKEN) or HTTP (SLACK_SIGNING_SECRET);
    a `Platform` (bot/ports/platform.py) for `rinna-bot run`."""

    name = PLATFORM

    def __init__(self, app: AsyncApp, handlers: SlackHandlers, settings: Settings,
                 host: str) -> None:
        self.app = app
        self.handlers = handlers
        self._app_token = settings.slack_app_token
        self._signing_secret = (settings.slack_signing_secret.get_secret_value().encode()
                                if settings.slack_signing_secret is not None else None)
        self._port = settings.slack_port
        self._host = host
        self.port: int | None = None  # the HTTP port actually bound (HTTP mode)
        self._runner: web.AppRunner | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._closed = asyncio.Event()

    @property
    def mode(self) -> str:
        return "socket" if self._app_token is not None else "http"

    @property
    def connected(self) -> bool:
        """For the health check: the Socket Mode websocket is open, or HTTP mode is listening."""
        if self._socket is not None:
            session = self._socket.client.current_session
            return session is not None and not session.closed
        return self._runner is not None

    async def start(self) -> None:
        await self._check_bot_token()
        if self._app_token is not None:
            await self._start_socket_mode(self._app_token.get_secret_value())
        else:
            await self._start_http()

    async def ready(self) -> None:
        """Slack's Web API answers from the start: recovery may begin at once."""

    async def stopped(self) -> None:
        """Slack's clients reconnect by themselves: it stops only when closed."""
        await self._closed.wait()

    def recovery_sink(self, delivery: Delivery) -> ReplySink:
        return self.handlers.recovery_sink(delivery)

    async def stop_intake(self) -> None:
        """Stop taking events (the answers in flight go on)."""
        if self._socket is not None:
            await self._socket.close_async()
            self._socket = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Stop taking events, let answers in flight finish for `grace_s`, cancel the rest."""
        self._closed.set()
        await self.stop_intake()
        pending = set(self.handlers.inflight) | set(self.handlers.background)
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_s)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _check_bot_token(self) -> None:
        try:
            auth = await self.app.client.auth_test()
        except SlackApiError as exc:
            if exc.response.get("error") in AUTH_ERRORS:
                raise ConfigError(
                    f"SLACK_BOT_TOKEN was rejected by Slack ({exc.response.get('error')}); "
                    "set it to the app's Bot User OAuth Token (xoxb-...)") from None
            log.warning("slack auth.test failed: %s; starting anyway", describe(exc))
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("slack auth.test failed: %s; starting anyway", describe(exc))
        else:
            log.info("slack: signed in as %s in %s", auth.get("user"), auth.get("team"))
            # Bolt asks auth.test on the first event, and again for every event that arrives
            # before that answer: hand it this one instead, so no event calls it.
            for middleware in getattr(self.app, "_async_middleware_list", ()):
                if isinstance(middleware, AsyncSingleTeamAuthorization):
                    middleware.auth_test_result = auth

    async def _start_http(self) -> None:
        web_app = web.Application()
        web_app.router.add_post(EVENTS_PATH, self._events)
        runner = web.AppRunner(web_app, access_log=None, shutdown_timeout=CLOSE_GRACE_S)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"SLACK_PORT={self._port}: cannot listen ({exc.strerror})") from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("slack: HTTP mode, listening on %s:%d%s", self._host, self.port, EVENTS_PATH)

    async def _events(self, request: web.Request) -> web.Response:
        """Verify the signature on the raw bytes first; only a signed request is parsed. Any
        request that is not Slack's gets a 4xx and at most one log line, never a traceback."""
        raw = await request.read()
        if self._signing_secret is None or not verify_signature(
                self._signing_secret, raw, request.headers.get("X-Slack-Request-Timestamp"),
                request.headers.get("X-Slack-Signature")):
            log.info("slack: refused a request with a missing, bad or stale signature")
            return web.json_response({"error": "invalid request"}, status=401)
        try:
            body = raw.decode("utf-8")
            _check_shape(body, request.content_type)
            bolt_request = AsyncBoltRequest(body=body, query=request.query_string,
                                            headers=request.headers)  # type: ignore[arg-type]
            response = await self.app.async_dispatch(bolt_request)
        except Exception as exc:  # signed, but not a request Slack sends
            log.warning("slack: refused a malformed signed request (%s)", type(exc).__name__)
            return web.json_response({"error": "malformed request"}, status=400)
        return await to_aiohttp_response(response)

    async def _start_socket_mode(self, app_token: str) -> None:
        handler = CheckedSocketModeHandler(self.app, app_token=app_token)
        self._socket = handler
        try:
            handler.client.wss_uri = await handler.client.issue_new_wss_url()
            await asyncio.wait_for(handler.connect_async(), SOCKET_CONNECT_TIMEOUT_S)
        except SlackApiError as exc:
            await self.close()
            error = exc.response.get("error")
            if error in AUTH_ERRORS:
                raise ConfigError(
                    f"SLACK_APP_TOKEN was rejected by Slack ({error}); set it to an app-level "
                    "token (xapp-...) with the connections:write scope") from None
            raise SlackConnectError(f"Slack Socket Mode: apps.connections.open failed "
                                    f"({error or exc.response.status_code})") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            await self.close()
            raise SlackConnectError(
                f"Slack Socket Mode: could not connect ({type(exc).__name__})") from None
        log.info("slack: Socket Mode connected")


class CheckedSocketModeHandler(AsyncSocketModeHandler):
    """Socket Mode without an HTTP layer: a request in a shape Slack does not send is acked
    (so it is not retried) with one log line, and never reaches bolt, whose own middleware
    would raise on it."""

    async def handle(self, client: Any, req: SocketModeRequest) -> None:
        try:
            if not isinstance(req.payload, dict):
                raise slack_shapes.MalformedRequest("payload is not an object")
            slack_shapes.check_body(req.payload)
        except slack_shapes.MalformedRequest as exc:
            log.warning("slack: refused a request in the wrong shape (%s)", exc)
            await client.send_socket_mode_response(
                SocketModeResponse(envelope_id=req.envelope_id))
            return
        await super().handle(client, req)


def verify_signature(secret: bytes, body: bytes, timestamp: str | None,
                     signature: str | None, *, now: float | None = None) -> bool:
    """Slack's v0 request signature over the raw body, within 5 minutes; False for anything
    malformed (a non-numeric timestamp, a missing header) rather than an exception."""
    if (not timestamp or not signature or len(timestamp) > MAX_TIMESTAMP_DIGITS
            or not timestamp.isascii() or not timestamp.isdigit()):
        return False  # an absurd length is refused before int() (which raises past 4,300)
    if abs((time.time() if now is None else now) - int(timestamp)) > SIGNATURE_MAX_AGE_S:
        return False
    expected = "v0=" + hmac.new(secret, b"v0:" + timestamp.encode() + b":" + body,
                                hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))


def _check_shape(body: str, content_type: str) -> None:
    """Raise ValueError unless the body is what Slack sends: a JSON object, or a form whose
    `payload` (if any) is a JSON object, each in the shape its listeners read
    (adapters/slack_shapes.py)."""
    if content_type == "application/json" or body.lstrip().startswith("{"):
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        slack_shapes.check_json(data)
        return
    from urllib.parse import parse_qs

    form = parse_qs(body, keep_blank_values=True, strict_parsing=bool(body))
    if "payload" in form:
        payload = json.loads(form["payload"][0])
        if not isinstance(payload, dict):
            raise ValueError("payload is not a JSON object")
        slack_shapes.check_payload(payload)
    elif "command" in form:
        slack_shapes.check_command(form)


def build_slack_service(chat: ChatService, settings: Settings, *,
                        status: StatusSource | None = None,
                        host: str = "0.0.0.0") -> SlackService:
    """The Slack app over the core services, ready to `start()`; nothing connects yet."""
    if settings.slack_bot_token is None:
        raise ConfigError("SLACK_BOT_TOKEN is not set")
    secret = settings.slack_signing_secret
    if settings.slack_app_token is None and secret is None:
        raise ConfigError("SLACK_BOT_TOKEN is set: also set SLACK_APP_TOKEN (Socket Mode) "
                          "or SLACK_SIGNING_SECRET (HTTP mode)")
    client = AsyncWebClient(token=settings.slack_bot_token.get_secret_value(),
                            base_url=settings.slack_api_url)
    # Bolt's loggers take their level from the logger given here (setup_logging keeps
    # "slack_bolt" at WARNING unless LOG_LEVEL=DEBUG); left alone, each copies the root's INFO
    # and, for one, logs whole request bodies (message text) on a signature failure.
    # The app's name names its loggers too (set up on every request): keep them under
    # "slack_bolt", away from the project's own "rinna-bot" logger.
    # process_before_response: Slack gets its 200 when the listener returns, and listeners
    # return once the chat service has recorded the message (the answer goes on after it).
    app = AsyncApp(client=client, name="slack_bolt.rinna-bot",
                   logger=logging.getLogger("slack_bolt"), process_before_response=True,
                   signing_secret=secret.get_secret_value() if secret is not None else "")
    api = SlackApi(client)
    handlers = SlackHandlers(chat, api, UserNames(api), AccessPolicy.from_settings(settings),
                             status=status, files=slack_fetcher(settings),
                             summary_messages=settings.summary_channel_messages)
    register(app, handlers)
    return SlackService(app, handlers, settings, host)


def build_platform(chat: ChatService, settings: Settings,
                   status: StatusSource | None) -> SlackService | None:
    """The Slack platform, or None when SLACK_BOT_TOKEN is not set."""
    if not settings.slack_enabled:
        return None
    return build_slack_service(chat, settings, status=status)

"""Files for the fake platforms to serve (Slack's files-pri, Discord's attachments), and a
foreign host: a server that is not the platform's, recording whatever reaches it (a bot token
must never). Every request is recorded with its Authorization header. A slow file holds its
body until the test ends (released on close): no sleeps anywhere."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class FakeFile:
    data: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    slow: bool = False  # sends its first chunk, then nothing more until released
    redirect: str | None = None  # answers 302 to this URL (absolute, or a path on this host)
    endless: int = 0  # streams this many bytes (chunked, no Content-Length), never in memory
    token: str | None = None  # a Bearer token it requires (Slack's private files), else 403


@dataclass(frozen=True, slots=True)
class FileRequest:
    path: str
    authorization: str | None


@dataclass
class FileShelf:
    """Files served under `prefix` on a fake's own server."""

    prefix: str
    files: dict[str, FakeFile] = field(default_factory=dict)
    requests: list[FileRequest] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)  # path -> body bytes written
    released: asyncio.Event = field(default_factory=asyncio.Event)
    base: str = ""  # the server's origin, set when it starts

    def add(self, name: str, file: FakeFile) -> str:
        """Serve `file` as `name`; returns its URL."""
        self.files[name] = file
        return f"{self.base}{self.prefix}/{name}"

    def route(self, app: web.Application) -> None:
        app.router.add_get(self.prefix + "/{name:.*}", self.handle)

    def asked_for(self, name: str) -> list[FileRequest]:
        return [r for r in self.requests if r.path == f"{self.prefix}/{name}"]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests.append(FileRequest(request.path, request.headers.get("Authorization")))
        file = self.files.get(name)
        if file is None:
            return web.Response(status=404)
        if file.token is not None and request.headers.get("Authorization") != f"Bearer {file.token}":
            return web.Response(status=403, text="login required")
        if file.redirect is not None:
            raise web.HTTPFound(file.redirect)
        if not (file.slow or file.endless):
            return web.Response(body=file.data, headers={"Content-Type": file.content_type})
        response = web.StreamResponse(headers={"Content-Type": file.content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        self.sent[request.path] = 0
        try:
            if file.slow:
                await response.write(file.data[:CHUNK])
                await self.released.wait()
                return response
            while self.sent[request.path] < file.endless:
                await response.write(b"a" * CHUNK)
                self.sent[request.path] += CHUNK
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client stopped reading: what a capped download does
        return response


class ForeignHost:
    """A server that is not the platform's: it serves files too (so a fetch that reached it
    would succeed), and records every request."""

    def __init__(self) -> None:
        self.shelf = FileShelf("/f")
        self._runner: web.AppRunner | None = None

    async def start(self) -> ForeignHost:
        app = web.Application()
        self.shelf.route(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.shelf.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    @property
    def requests(self) -> list[FileRequest]:
        return self.shelf.requests

    async def close(self) -> None:
        self.shelf.released.set()
        if self._runner is not None:
            await self._runner.cleanup()

"""A local stand-in for the Hugging Face hub's HTTP API, over real HTTP on 127.0.0.1 (point
HF_ENDPOINT at `url`): one repository at one commit, with the three routes huggingface_hub
uses to list and download it: model info (the file list), the file tree (with sizes and
hashes, for checksum checks) and `resolve` (HEAD for metadata, GET for the bytes). It records
every request."""

from __future__ import annotations

import hashlib
from pathlib import Path

from aiohttp import web


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324 - git's own


class FakeHub:
    def __init__(self, repo: str, commit: str, files: dict[str, bytes]) -> None:
        self.repo, self.commit, self.files = repo, commit, files
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self._runner: web.AppRunner | None = None
        self.url = ""

    @classmethod
    def of_folder(cls, repo: str, commit: str, folder: Path, **extra: bytes) -> FakeHub:
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        return cls(repo, commit, {**files, **extra})

    async def start(self) -> FakeHub:
        app = web.Application()
        app.middlewares.append(self._record)
        app.router.add_get("/api/models/{org}/{name}/revision/{rev}", self._info)
        app.router.add_get("/api/models/{org}/{name}/tree/{rev}", self._tree)
        app.router.add_route("*", "/{org}/{name}/resolve/{rev}/{file:.+}", self._resolve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def fetched(self) -> list[str]:
        """Files whose bytes were downloaded (GET on resolve)."""
        marker = f"/{self.repo}/resolve/"
        return sorted(path.split(marker, 1)[1].split("/", 1)[1] for method, path
                      in self.requests if method == "GET" and marker in path)

    @web.middleware
    async def _record(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        self.requests.append((request.method, request.path))
        return await handler(request)

    def _check(self, request: web.Request) -> None:
        if f"{request.match_info['org']}/{request.match_info['name']}" != self.repo:
            raise web.HTTPNotFound(headers={"X-Error-Code": "RepoNotFound"})
        if request.match_info["rev"] not in ("main", self.commit):
            raise web.HTTPNotFound(headers={"X-Error-Code": "RevisionNotFound"})

    async def _info(self, request: web.Request) -> web.Response:
        self._check(request)
        return web.json_response({"id": self.repo, "modelId": self.repo, "sha": self.commit,
                                  "private": False,
                                  "siblings": [{"rfilename": n} for n in sorted(self.files)]})

    async def _tree(self, request: web.Request) -> web.Response:
        self._check(request)
        return web.json_response([
            {"type": "file", "path": name, "size": len(data), "oid": git_sha1(data),
             "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                     "pointerSize": 130}}
            for name, data in sorted(self.files.items())])

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        self._check(request)
        data = self.files.get(request.match_info["file"])
        if data is None:
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound"})
        headers = {"X-Repo-Commit": self.commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                   "Content-Length": str(len(data))}
        if request.method == "HEAD":
            return web.Response(headers=headers)
        return web.Response(body=data, headers=headers)

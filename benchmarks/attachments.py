"""Reading a 1 MB text attachment: event-loop lag while it is downloaded (from a local server
standing in for the platform's file host), decoded and fitted to the prompt budget. Target:
heartbeat lag p99 <= 20 ms. For contrast, the same decoding and fitting run on the loop.

    python -m benchmarks.attachments
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from adapters.file_download import FileHosts, HostFetcher
from benchmarks.common import machine, median, percentile, tiny_settings
from bot.core.attachments import (Attachment, AttachmentLimits, AttachmentReader, fit, prompt_room,
                             readable)
from bot.core.attachments import _File as File
from bot.engine.tokenizer import Tokenizer

BEAT = 0.005
ROUNDS = 50
SIZE = 1_000_000
LINE = "2026-12-06 12:00:00 INFO サーバーが要求を処理しました (id=12345, 経過 3 ms)\n"


def payload(encoding: str) -> bytes:
    text = LINE * (SIZE // len(LINE.encode(encoding)))
    return text.encode(encoding)[:SIZE]


async def serve(files: dict[str, bytes]) -> tuple[web.AppRunner, str]:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=files[request.match_info["name"]],
                            content_type="text/plain")

    app = web.Application()
    app.router.add_get("/files/{name}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def with_heartbeat(work: Callable[[], Awaitable[None]]) -> tuple[list[float], float]:
    lags: list[float] = []
    done = asyncio.Event()

    async def heartbeat() -> None:
        expected = time.perf_counter() + BEAT
        while not done.is_set():
            await asyncio.sleep(BEAT)
            now = time.perf_counter()
            lags.append(max(0.0, now - expected) * 1000)
            expected = now + BEAT

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(BEAT * 2)
    started = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - started
    done.set()
    await beat
    return lags, elapsed


async def measure(tokenizer: Tokenizer, budget: int) -> None:
    files = {"utf8.log": payload("utf-8"), "sjis.log": payload("cp932")}
    runner, base = await serve(files)
    fits = prompt_room(tokenizer, budget)
    reader = AttachmentReader(AttachmentLimits(max_bytes=2 * SIZE), fits)
    fetcher = HostFetcher(FileHosts.of(base), timeout_s=30.0)
    try:
        for name in files:
            attachment = Attachment(name, f"{base}/files/{name}", len(files[name]))
            notes: tuple[str, ...] = ()

            async def off_loop() -> None:
                nonlocal notes
                for _ in range(ROUNDS):
                    notes = (await reader.read("このログを要約して", [attachment], fetcher)).notes

            async def on_loop() -> None:
                for _ in range(ROUNDS):
                    text = readable(files[name])
                    assert text is not None
                    fit("このログを要約して", [File(name, text)], fits)
                    await asyncio.sleep(0)

            for label, work in (("bot (download + decode + fit off the loop)", off_loop),
                                ("contrast: decode + fit on the loop", on_loop)):
                lags, elapsed = await with_heartbeat(work)
                p99 = percentile(lags, 99)
                verdict = "met" if p99 <= 20 else "NOT met"
                print(f"{name} ({len(files[name]):,} bytes), {label}: {ROUNDS} reads in "
                      f"{elapsed:.2f} s ({elapsed / ROUNDS * 1000:.0f} ms each); lag median "
                      f"{median(lags):.2f} ms, p99 {p99:.2f} ms, max {max(lags):.2f} ms"
                      + (f" (target p99 <= 20 ms: {verdict})" if label.startswith("bot") else ""))
            print(f"  notes: {notes}")
    finally:
        await runner.cleanup()


def main() -> None:
    settings = tiny_settings()
    tokenizer = Tokenizer.from_file(f"{settings.model_id}/spiece.model")
    print(f"Attachments: a 1 MB log read {ROUNDS} times, 5 ms heartbeat; prompt budget "
          f"{settings.prompt_budget} tokens (tiny model's tokenizer).")
    print(f"Machine: {machine()}")
    asyncio.run(measure(tokenizer, settings.prompt_budget))


if __name__ == "__main__":
    main()

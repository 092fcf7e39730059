"""Downloading attachments over real HTTP from the fake platforms' own file hosts
(adapters/file_download.py, slack_files.py, discord_files.py): only the platform's hosts, the
Slack bot token to Slack's host and nowhere else (redirects included), a byte cap, a timeout,
and the event loop free meanwhile."""

from __future__ import annotations

from collections.abc import AsyncIterator

import discord
import pytest
import yarl
from pydantic import SecretStr

from adapters.discord_files import discord_attachments, discord_fetcher, discord_file_hosts
from adapters.file_download import FileHosts, HostFetcher
from adapters.slack_files import slack_attachments, slack_fetcher, slack_file_hosts
from bot.core.attachments import Attachment
from bot.config import Settings
from bot.errors import AttachmentTooLarge, AttachmentUnavailable
from tests.discord_fakes import FakeDiscord
from tests.file_fakes import FakeFile, ForeignHost
from tests.slack_fakes import BOT_TOKEN, FakeSlack

MB = 1_000_000


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack().start()
    yield fake
    await fake.close()


@pytest.fixture
async def foreign() -> AsyncIterator[ForeignHost]:
    host = await ForeignHost().start()
    yield host
    await host.close()


def slack_settings(slack: FakeSlack, settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"slack_bot_token": SecretStr(BOT_TOKEN),
                                       "slack_api_url": slack.api_url, **changes})


def fetcher_for(slack: FakeSlack, settings: Settings, **changes: object) -> HostFetcher:
    fetcher = slack_fetcher(slack_settings(slack, settings, **changes))
    assert fetcher is not None
    return fetcher


def test_slack_hosts_follow_the_api_base() -> None:
    real = slack_file_hosts("https://slack.com/api/")
    assert real.allows(yarl.URL("https://files.slack.com/files-pri/T1-F1/a.txt"))
    assert real.allows(yarl.URL("https://slack.com/api/x"))
    assert not real.allows(yarl.URL("http://files.slack.com/files-pri/T1-F1/a.txt"))
    assert not real.allows(yarl.URL("https://files.slack.com:8443/a.txt"))
    assert not real.allows(yarl.URL("https://evilslack.com/a.txt"))
    assert not real.allows(yarl.URL("https://slack.com.evil.example/a.txt"))
    assert not real.allows(yarl.URL("https://user:pw@files.slack.com/a.txt"))
    local = slack_file_hosts("http://127.0.0.1:8080/api/")
    assert local.allows(yarl.URL("http://127.0.0.1:8080/files-pri/a.txt"))
    assert not local.allows(yarl.URL("http://127.0.0.1:8081/files-pri/a.txt"))
    assert not local.allows(yarl.URL("http://x.127.0.0.1:8080/a.txt"))


def test_discord_hosts_are_its_rest_and_cdn_bases() -> None:
    hosts = discord_file_hosts()
    assert hosts.allows(yarl.URL("https://cdn.discordapp.com/attachments/1/2/message.txt"))
    assert hosts.allows(yarl.URL("https://discord.com/api/v10/x"))
    assert not hosts.allows(yarl.URL("https://cdn.discordapp.com.evil.example/a.txt"))
    assert not hosts.allows(yarl.URL("https://example.com/message.txt"))
    assert FileHosts.of("https://discord.com/api").domains == frozenset()


async def test_slack_file_is_downloaded_with_the_bot_token(
        slack: FakeSlack, settings: Settings) -> None:
    shared = slack.share("notes.txt", "メモ".encode())
    [attachment] = slack_attachments({"files": [shared]})
    data = await fetcher_for(slack, settings).fetch(attachment, MB)
    assert data == "メモ".encode()
    [request] = slack.files.requests
    assert request.authorization == f"Bearer {BOT_TOKEN}"


async def test_a_url_of_another_host_is_never_fetched(
        slack: FakeSlack, foreign: ForeignHost, settings: Settings) -> None:
    """However a URL got into an attachment (a person typed it, a forged event), a host that
    is not the platform's is not asked at all: the token cannot reach it."""
    url = foreign.shelf.add("a.txt", FakeFile(b"secret"))
    with pytest.raises(AttachmentUnavailable):
        await fetcher_for(slack, settings).fetch(Attachment("a.txt", url), MB)
    assert foreign.requests == []


async def test_a_redirect_to_another_host_is_not_followed(
        slack: FakeSlack, foreign: ForeignHost, settings: Settings) -> None:
    elsewhere = foreign.shelf.add("a.txt", FakeFile(b"secret"))
    shared = slack.share("a.txt", redirect=elsewhere)
    [attachment] = slack_attachments({"files": [shared]})
    with pytest.raises(AttachmentUnavailable):
        await fetcher_for(slack, settings).fetch(attachment, MB)
    assert len(slack.files.requests) == 1  # Slack's host was asked, with the token
    assert foreign.requests == []  # the token never left for the other host


async def test_a_redirect_within_slack_is_followed_with_the_token(
        slack: FakeSlack, settings: Settings) -> None:
    target = slack.share("real.txt", b"moved")
    shared = slack.share("link.txt", redirect=target["url_private"])
    [attachment] = slack_attachments({"files": [shared]})
    assert await fetcher_for(slack, settings).fetch(attachment, MB) == b"moved"
    assert [r.authorization for r in slack.files.requests] == [f"Bearer {BOT_TOKEN}"] * 2


async def test_a_sign_in_page_served_instead_of_the_file_is_not_read(
        slack: FakeSlack, settings: Settings) -> None:
    """Slack answers a file the token may not read (no files:read) with its sign-in page."""
    page = slack.files.add("signin", FakeFile(b"<html>sign in</html>", "text/html"))
    shared = slack.share("notes.txt", redirect=page)
    [attachment] = slack_attachments({"files": [shared]})
    with pytest.raises(AttachmentUnavailable):
        await fetcher_for(slack, settings).fetch(attachment, MB)
    real_page = slack.share("page.html", b"<html>ok</html>", mimetype="text/html")
    [html] = slack_attachments({"files": [real_page]})
    assert await fetcher_for(slack, settings).fetch(html, MB) == b"<html>ok</html>"


async def test_a_50_mb_file_stops_at_the_cap(slack: FakeSlack, settings: Settings) -> None:
    """Size not declared, sent chunked: the download stops once past the cap."""
    shared = slack.share("huge.log", endless=50 * MB, size=None)
    attachment = Attachment("huge.log", shared["url_private"])
    with pytest.raises(AttachmentTooLarge):
        await fetcher_for(slack, settings).fetch(attachment, MB)
    assert sum(slack.files.sent.values()) < 50 * MB


async def test_a_declared_length_over_the_cap_is_refused_before_reading(
        slack: FakeSlack, settings: Settings) -> None:
    shared = slack.share("big.txt", b"x" * 5000)
    with pytest.raises(AttachmentTooLarge):
        await fetcher_for(slack, settings).fetch(Attachment("big.txt", shared["url_private"]),
                                                 1000)


async def test_a_slow_file_times_out_and_the_loop_keeps_running(
        slack: FakeSlack, settings: Settings) -> None:
    shared = slack.share("slow.txt", b"first bytes", slow=True)
    fetcher = fetcher_for(slack, settings, attachment_timeout_s=0.3)
    with pytest.raises(AttachmentUnavailable):
        await fetcher.fetch(Attachment("slow.txt", shared["url_private"]), MB)
    # The fake host, on this same loop, took the request and still holds it open at the
    # timeout: the loop served it while the fetch waited, and the fetch gave up on its own.
    name = shared["url_private"].split("/files-pri/", 1)[1]
    [request] = slack.files.asked_for(name)
    assert request.path in slack.files.holding


async def test_slack_files_deleted_are_left_out_and_unserved_ones_have_no_url(
        slack: FakeSlack, settings: Settings) -> None:
    files = [{"id": "F1", "name": "gone", "mode": "tombstone"},
             {"id": "F2", "name": "drive", "is_external": True, "url_private": "https://x/y"},
             {"id": "F4", "name": "stub.txt", "file_access": "check_file_info"},
             {"id": "F3", "name": "snippet", "filetype": "python",
              "mimetype": "application/octet-stream", "url_private": "https://files.slack.com/s",
              "size": 12}]
    assert slack_attachments({"files": files}) == (
        Attachment("drive", ""), Attachment("stub.txt", ""),
        Attachment("snippet", "https://files.slack.com/s", 12, "text/plain"))
    with pytest.raises(AttachmentUnavailable):  # noted in the answer, never fetched
        await fetcher_for(slack, settings).fetch(Attachment("drive", ""), MB)
    assert slack_attachments({"files": "nonsense"}) == ()
    assert slack_attachments({}) == ()


async def test_discord_attachment_is_downloaded_without_any_token(
        monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    fake = FakeDiscord()
    await fake.start()
    try:
        monkeypatch.setattr(discord.http.Route, "BASE", fake.base_url)
        entry = fake.attach("message.txt", "長い貼り付け".encode())
        state = discord.state.ConnectionState.__new__(discord.state.ConnectionState)
        state.http = None  # type: ignore[assignment]
        [attachment] = discord_attachments([discord.Attachment(data=entry, state=state)])
        assert attachment.name == "message.txt" and attachment.size == len("長い貼り付け".encode())
        fetcher = discord_fetcher(settings)
        assert fetcher is not None
        assert await fetcher.fetch(attachment, MB) == "長い貼り付け".encode()
        assert [r.authorization for r in fake.files.requests] == [None]
    finally:
        await fake.close()


async def test_fetcher_repr_shows_no_token(slack: FakeSlack, settings: Settings) -> None:
    fetcher = fetcher_for(slack, settings)
    assert BOT_TOKEN not in repr(fetcher)
    assert "?" not in repr(Attachment("a", "https://x/a?signature=abc"))

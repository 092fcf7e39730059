"""The core of reading attachments (bot/core/attachments.py): decoding, text-likeness, the turn with
a heading per file, the budget cut and its note, the notes for files not read. Downloads come
from an in-memory fetcher here (a swappable part); the adapters' tests download over HTTP."""

from __future__ import annotations

import threading

import pytest

from bot.core.attachments import (CUT_MARK, HEADING, NOTE_CUT, NOTE_NO_ROOM, NOTE_NOT_TEXT,
                             NOTE_OFF, NOTE_TOO_LARGE, NOTE_TOO_MANY, NOTE_UNAVAILABLE,
                             NOTE_UNDECODABLE, Attachment, AttachmentLimits, AttachmentReader,
                             ReadFiles,
                             decode, plainly_binary, prompt_room, shown_name)
from bot.conversation import Speaker, Turn
from bot.errors import AttachmentTooLarge, AttachmentUnavailable
from bot.core.prompt import fit_prompt
from bot.engine.tokenizer import Tokenizer

JAPANESE = "日本語のテキストです。ひらがな、カタカナ、漢字が入っています。\n二行目もあります。"


class MemoryFetcher:
    """Files by URL; records what was fetched and from which thread the decoding ran."""

    def __init__(self, files: dict[str, bytes | Exception]) -> None:
        self.files = files
        self.fetched: list[str] = []

    async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes:
        self.fetched.append(attachment.url)
        data = self.files[attachment.url]
        if isinstance(data, Exception):
            raise data
        if len(data) > max_bytes:
            raise AttachmentTooLarge(attachment.name)
        return data


def file(name: str, content_type: str | None = None, size: int | None = None) -> Attachment:
    return Attachment(name, f"https://files.example/{name}", size, content_type)


def reader(**limits: int) -> AttachmentReader:
    return AttachmentReader(AttachmentLimits(**limits))


# ----- decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "cp932", "shift_jis", "euc_jp",
                                      "utf-16"])
def test_japanese_text_decodes_right_in_each_encoding(encoding: str) -> None:
    assert decode(JAPANESE.encode(encoding)) == JAPANESE


def test_short_euc_jp_and_shift_jis_are_told_apart() -> None:
    # Both byte strings decode without error in the other encoding: the choice is by which
    # reads as Japanese.
    for encoding in ("euc_jp", "cp932"):
        assert decode("こんにちは".encode(encoding)) == "こんにちは"


def test_binary_and_undecodable_bytes_are_refused() -> None:
    assert decode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR") is None  # NUL bytes
    assert decode(bytes([0x82, 0xff, 0xfe, 0x81, 0x00 + 0x7f, 0xa0, 0xfd] * 50)) is None
    assert decode(b"\x01\x02\x03\x04\x05\x06 abc" * 100) is None  # mostly control characters


def test_plainly_binary_by_type_or_name_but_text_types_win() -> None:
    assert plainly_binary(file("photo.png", "image/png"))
    assert plainly_binary(file("scan.pdf"))
    assert plainly_binary(file("clip", "video/mp4"))
    assert not plainly_binary(file("message.txt", "text/plain; charset=utf-8"))
    assert not plainly_binary(file("data.json", "application/json"))
    assert not plainly_binary(file("main.py", "application/octet-stream"))  # the name says text
    assert not plainly_binary(file("README"))  # unknown: judged by its bytes


def test_shown_name_is_one_bounded_line() -> None:
    assert shown_name("a\nb\r\nc\x00.txt") == "a b c.txt"
    assert len(shown_name("x" * 500 + ".txt")) == 100
    assert shown_name("") == "(名前なし)"


# ----- the turn and the notes ----------------------------------------------------------------


async def test_text_file_goes_into_the_turn_under_its_heading() -> None:
    fetcher = MemoryFetcher({"https://files.example/notes.md": JAPANESE.encode("cp932")})
    read = await reader().read("要約して", [file("notes.md", "text/markdown")], fetcher)
    assert read.text == f"要約して\n\n{HEADING.format(name='notes.md')}\n{JAPANESE}"
    assert read.notes == ()


async def test_image_is_not_downloaded_and_gets_a_note() -> None:
    fetcher = MemoryFetcher({})
    read = await reader().read("これは何?", [file("cat.png", "image/png")], fetcher)
    assert read.text == "これは何?"
    assert read.notes == (NOTE_NOT_TEXT.format(name="cat.png"),)
    assert fetcher.fetched == []


async def test_declared_size_over_the_limit_is_not_downloaded() -> None:
    fetcher = MemoryFetcher({})
    read = await reader(max_bytes=1000).read("", [file("big.log", "text/plain", 50_000_000)],
                                             fetcher)
    assert read.notes == (NOTE_TOO_LARGE.format(name="big.log", limit="1 KB"),)
    assert fetcher.fetched == []


async def test_undeclared_size_over_the_limit_while_streaming_gets_the_same_note() -> None:
    fetcher = MemoryFetcher({"https://files.example/big.log": b"a" * 2000})
    read = await reader(max_bytes=1000).read("q", [file("big.log")], fetcher)
    assert read.text == "q"
    assert read.notes == (NOTE_TOO_LARGE.format(name="big.log", limit="1 KB"),)


async def test_download_failure_and_undecodable_files_get_notes_others_are_read() -> None:
    fetcher = MemoryFetcher({
        "https://files.example/gone.txt": AttachmentUnavailable("timeout"),
        "https://files.example/blob.dat": b"\x00\x01\x02binary",
        "https://files.example/ok.txt": b"fine",
    })
    read = await reader().read("q", [file("gone.txt"), file("blob.dat"), file("ok.txt")],
                               fetcher)
    assert read.text == f"q\n\n{HEADING.format(name='ok.txt')}\nfine"
    assert read.notes == (NOTE_UNAVAILABLE.format(name="gone.txt"),
                          NOTE_UNDECODABLE.format(name="blob.dat"))


async def test_files_over_the_count_are_named_in_a_note_and_not_fetched() -> None:
    files = {f"https://files.example/{n}.txt": n.encode() for n in "abc"}
    fetcher = MemoryFetcher(files)
    read = await reader(max_count=2).read("", [file(f"{n}.txt") for n in "abc"], fetcher)
    assert read.notes == (NOTE_TOO_MANY.format(count=2, names="c.txt"),)
    assert "https://files.example/c.txt" not in fetcher.fetched
    assert read.text == f"{HEADING.format(name='a.txt')}\na\n\n{HEADING.format(name='b.txt')}\nb"


async def test_files_are_noted_not_read_when_reading_is_off() -> None:
    read = await reader(max_count=0).read("q", [file("a.txt"), file("b.txt")], MemoryFetcher({}))
    assert read == ReadFiles("q", (NOTE_OFF.format(names="a.txt」「b.txt"),))
    off = await reader().read("q", [file("a.txt")], None)  # no fetcher: the same
    assert off.notes == (NOTE_OFF.format(names="a.txt"),)


async def test_decoding_runs_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    class Recording(bytes):
        def decode(self, *args: object, **kwargs: object) -> str:  # type: ignore[override]
            seen.append(threading.get_ident())
            return bytes(self).decode(*args, **kwargs)  # type: ignore[arg-type]

    fetcher = MemoryFetcher({"https://files.example/a.txt": Recording(b"text")})
    read = await reader().read("", [file("a.txt")], fetcher)
    assert read.text.endswith("text")
    assert seen and loop_thread not in seen


# ----- the prompt budget ---------------------------------------------------------------------


async def test_file_too_big_for_the_prompt_is_cut_at_its_end_with_a_note(
        tokenizer: Tokenizer) -> None:
    budget = 300
    long_text = "".join(f"{i}行目: ログの内容です。\n" for i in range(2000))
    fetcher = MemoryFetcher({"https://files.example/app.log": long_text.encode()})
    fits = prompt_room(tokenizer, budget)
    read = await AttachmentReader(AttachmentLimits(), fits).read(
        "このログを見て", [file("app.log")], fetcher)
    assert read.notes == (NOTE_CUT.format(name="app.log"),)
    head = f"このログを見て\n\n{HEADING.format(name='app.log')}\n"
    assert read.text.startswith(head + "0行目: ログの内容です。\n")
    assert read.text.endswith(CUT_MARK)
    kept = read.text[len(head):-len(CUT_MARK)].rstrip("\n")
    assert long_text.startswith(kept) and len(kept) > 100  # the head, and as much as fits
    # The turn fits as it is: the prompt builder does not have to shorten it again.
    fitted = fit_prompt([Turn(Speaker.USER, read.text)], tokenizer, budget)
    assert not fitted.shortened
    assert fitted.turns[-1].text == read.text


async def test_second_file_with_no_room_left_is_noted_as_not_read(tokenizer: Tokenizer) -> None:
    first = "あ" * 5000
    fetcher = MemoryFetcher({"https://files.example/a.txt": first.encode(),
                             "https://files.example/b.txt": b"second"})
    read = await AttachmentReader(AttachmentLimits(), prompt_room(tokenizer, 200)).read(
        "", [file("a.txt"), file("b.txt")], fetcher)
    assert read.notes == (NOTE_CUT.format(name="a.txt"), NOTE_NO_ROOM.format(name="b.txt"))
    assert read.text.endswith(f"{HEADING.format(name='b.txt')}\n{CUT_MARK}")


async def test_a_file_that_fits_is_whole(tokenizer: Tokenizer) -> None:
    fetcher = MemoryFetcher({"https://files.example/a.txt": JAPANESE.encode()})
    read = await AttachmentReader(AttachmentLimits(), prompt_room(tokenizer, 1920)).read(
        "q", [file("a.txt")], fetcher)
    assert read.notes == ()
    assert read.text.endswith(JAPANESE)



# ----- the notes in the answer (the chat service) --------------------------------------------


async def test_notes_end_the_answer_and_are_stored_with_it(scripted: object,
                                                            store: object) -> None:
    from bot.core.chat import ChatService
    from bot.conversation import ConversationKey, IncomingMessage
    from tests.fakes import RecordingSink

    assert isinstance(scripted, ChatService)
    key = ConversationKey("test", "w", "c", "t")
    note = NOTE_NOT_TEXT.format(name="cat.png")
    sink = RecordingSink()
    await scripted.handle(key, IncomingMessage("質問", "m1", "alice", notes=(note,)), sink)
    assert sink.final() == f"はい。\n\n{note}"
    delivery = await scripted.store.delivery("test", "m1")
    assert delivery is not None and delivery.answer_id is not None
    # Only an unreadable file, no words: the note, then how to ask.
    empty = RecordingSink()
    await scripted.handle(key, IncomingMessage("", "m2", "alice", notes=(note,)), empty)
    assert str(empty.final()).startswith(note + "\n\n")


async def test_files_are_read_after_the_platform_is_told_and_stored_as_read(
        scripted: object) -> None:
    from bot.core.chat import ChatService
    from bot.conversation import ConversationKey, IncomingMessage
    from tests.fakes import RecordingSink

    assert isinstance(scripted, ChatService)
    order: list[str] = []

    class Ordered(MemoryFetcher):
        async def fetch(self, attachment: Attachment, max_bytes: int) -> bytes:
            order.append("fetch")
            return await super().fetch(attachment, max_bytes)

    async def accepted() -> None:
        order.append("acknowledged")

    fetcher = Ordered({"https://files.example/a.txt": JAPANESE.encode("euc_jp")})
    key = ConversationKey("test", "w", "c", "t")
    message = IncomingMessage("読んで", "m1", "alice", attachments=(file("a.txt"),),
                              files=fetcher)
    await scripted.handle(key, message, RecordingSink(), accepted=accepted)
    assert order == ["acknowledged", "fetch"]  # a slow download never delays the ack
    conversation = await scripted.store.find(key)
    assert conversation is not None
    [stored, _answer] = reversed(await scripted.store.recent_turns(conversation, 10))
    assert stored.turn.text == f"読んで\n\n{HEADING.format(name='a.txt')}\n{JAPANESE}"
    assert JAPANESE.split("\n")[0] in scripted.generator.prompts[0]  # type: ignore[attr-defined]
    # What was read is the writer's stored text: export lists it, forget deletes it.
    [exported] = await scripted.store.author_turns("alice")
    assert exported.text == stored.turn.text
    assert await scripted.store.forget_author("alice") >= 1
    assert await scripted.store.author_turns("alice") == []


async def test_files_not_read_before_a_crash_are_named_by_the_recovery(
        store: object, tokenizer: Tokenizer) -> None:
    """The process died after the platform was told the message arrived, before its files
    were read: the restart's recovery answers the words and names the files it did not read
    (never silently); a message whose files were read leaves no such note."""
    from bot.core.attachments import NOTE_INTERRUPTED
    from bot.core.chat import ChatConfig, ChatService
    from bot.conversation import ConversationKey, IncomingMessage
    from storage.history import HistoryStore
    from tests.fakes import RecordingSink, ScriptedGenerator
    from tests.test_chat import Crash, crashing_at

    assert isinstance(store, HistoryStore)
    key = ConversationKey("test", "w", "c", "t")
    fetcher = MemoryFetcher({"https://files.example/a.txt": JAPANESE.encode()})
    first = ChatService(store, ScriptedGenerator(default="答え"), tokenizer,
                        ChatConfig(stream_interval_s=0.0), crash_hook=crashing_at("acknowledged"))
    message = IncomingMessage("読んで", "m1", "alice", attachments=(file("a.txt"),),
                              files=fetcher)
    with pytest.raises(Crash):
        await first.handle(key, message, RecordingSink())
    assert fetcher.fetched == []  # died before reading

    generator = ScriptedGenerator(default="答え")
    second = ChatService(store, generator, tokenizer, ChatConfig(stream_interval_s=0.0))
    sinks: list[RecordingSink] = []
    report = await second.recover("test", lambda d: sinks.append(RecordingSink()) or sinks[-1])
    assert report.answered == 1
    [sink] = sinks
    assert sink.final() == f"答え\n\n{NOTE_INTERRUPTED.format(names='a.txt')}"
    # read in the live path: the note is dropped, so nothing is added on a later recovery
    await second.handle(key, IncomingMessage("また読んで", "m2", "alice",
                                             attachments=(file("a.txt"),), files=fetcher),
                        RecordingSink())
    assert await store.unread_files("test", "m2") == ()


async def test_forget_drops_the_names_of_files_not_read(store: object) -> None:
    from bot.conversation import ConversationKey
    from storage.history import HistoryStore

    assert isinstance(store, HistoryStore)
    await store.note_unread_files("test", "m1", ["private.txt"])
    assert await store.accept(ConversationKey("test", "w", "c", "t"), "m1", "読んで",
                              "bob") is not None
    assert await store.unread_files("test", "m1") == ("private.txt",)
    await store.forget_author("bob")
    assert await store.unread_files("test", "m1") == ()

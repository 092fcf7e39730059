"""What an adapter hands the front door (bot/core/front_door.py): one parsed platform event, and a
thread's earlier messages as the platform shows them. Frozen values; nothing here knows a
platform."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from bot.core.access import AccessRequest
from bot.core.attachments import Attachment, Fetcher
from bot.conversation import ConversationKey, ReplySink
from bot.core.privilege import Member

Ack = Callable[[], Awaitable[None]]


class Command(StrEnum):
    """What an event asks of the bot. ASK: a question (the text is answered)."""

    ASK = "ask"
    RESET = "reset"  # start the conversation afresh (confirmed in the conversation)
    HELP = "help"  # how to use the bot, in the sink
    STATUS = "status"  # the bot's state, in the sink
    SUMMARY = "summary"  # summarise the thread (or the channel's last messages) into the sink
    CONFIG = "config"  # a community's settings: `config [scope] show|set|reset …` (admins)


# The words people write for a command (a mention's text, a slash command's argument),
# compared after trimming and lower-casing.
COMMAND_WORDS: dict[Command, frozenset[str]] = {
    Command.RESET: frozenset({"リセット", "reset"}),
    Command.HELP: frozenset({"help", "ヘルプ", "使い方"}),
    Command.STATUS: frozenset({"status", "ステータス", "状態"}),
    Command.SUMMARY: frozenset({"要約", "summary", "まとめ"}),
}
# The config command is its word and then arguments (`設定 set persona keigo`).
CONFIG_WORDS = frozenset({"config", "設定"})


def command_word(text: str,
                 words: Sequence[Command] = (*COMMAND_WORDS, Command.CONFIG)) -> Command:
    """The command `text` is, among `words` (a platform may take only some of them in some
    places: a thread message takes only reset); ASK when it is none of them."""
    word = text.strip().lower()
    if Command.CONFIG in words and word.split(None, 1)[:1] and \
            word.split(None, 1)[0] in CONFIG_WORDS:
        return Command.CONFIG
    for command in words:
        if word in COMMAND_WORDS.get(command, ()):
            return command
    return Command.ASK


class Writer(StrEnum):
    """Who wrote one of a thread's earlier messages."""

    BOT = "bot"  # this bot: an answer (or a notice, which the history leaves out)
    PERSON = "person"  # a person: a question or remark
    OTHER = "other"  # another bot, a system message, a webhook: not part of the conversation


@dataclass(frozen=True, slots=True)
class EarlierMessage:
    """One of a thread's earlier messages, oldest first, as the platform shows it (mentions
    already made readable)."""

    text: str
    delivery_key: str | None  # its platform message id (edits and deletes reach it)
    writer: Writer
    author: str | None = None  # a person's platform user id (forget/export)
    source: str | None = None  # the message it stands for, when not itself (a thread starter)
    attachments: tuple[Attachment, ...] = ()  # its files, read in with it (a person's)


EarlierReader = Callable[[], Awaitable[Sequence[EarlierMessage]]]


@dataclass(frozen=True, slots=True)
class Event:
    """One parsed platform event for the front door.

    key: the conversation; delivery_key: the platform message (or interaction) that brought it
    ("" when the platform has none, the console's reset); writer: who wrote the text; asker:
    who asked, when not the writer (「rinna に聞く」), with `about` the message asked about;
    command: what it asks (ASK: answer `text`); earlier: a reader of the thread's earlier
    messages, called only when the bot joins the thread; sink: where the reply goes; access:
    what the access policy judges (none: no restriction applies, the console); addressed:
    False for a message that does not mention the bot (answered only in a conversation the
    bot takes part in); accepted: awaited once the event is recorded (acknowledge the
    platform there); admitted: True when the adapter already called `FrontDoor.admit`
    (access and redelivery judged before parsing, which may look names up); stream_interval_s: how
    often the sink gets the growing text (None: the chat service's setting); member: for a
    CONFIG command, the person's platform rights (bot/core/privilege.py), read when it runs.
    """

    key: ConversationKey
    delivery_key: str
    text: str
    sink: ReplySink
    writer: str = ""
    asker: str = ""
    about: str | None = None
    command: Command = Command.ASK
    earlier: EarlierReader | None = None
    access: tuple[AccessRequest, ...] = ()
    addressed: bool = True
    accepted: Ack | None = None
    admitted: bool = False
    stream_interval_s: float | None = None
    # The message's attached files (read into its text once recorded: bot/core/attachments.py),
    # and the platform's downloader for them (None: files are not read, and the answer says so).
    attachments: tuple[Attachment, ...] = ()
    files: Fetcher | None = None
    member: Member | None = None  # CONFIG: who runs it, as the platform sees them, read now

"""What an adapter hands the front door (bot/front_door.py): one parsed platform event, and a
thread's earlier messages as the platform shows them. Frozen values; nothing here knows a
platform."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from bot.access import AccessRequest
from bot.conversation import ConversationKey, ReplySink

Ack = Callable[[], Awaitable[None]]


class Command(StrEnum):
    """What an event asks of the bot. ASK: a question (the text is answered)."""

    ASK = "ask"
    RESET = "reset"  # start the conversation afresh (confirmed in the conversation)
    HELP = "help"  # how to use the bot, in the sink
    STATUS = "status"  # the bot's state, in the sink
    SUMMARY = "summary"  # summarise the thread (or the channel's last messages) into the sink


# The words people write for a command (a mention's text, a slash command's argument),
# compared after trimming and lower-casing.
COMMAND_WORDS: dict[Command, frozenset[str]] = {
    Command.RESET: frozenset({"リセット", "reset"}),
    Command.HELP: frozenset({"help", "ヘルプ", "使い方"}),
    Command.STATUS: frozenset({"status", "ステータス", "状態"}),
    Command.SUMMARY: frozenset({"要約", "summary", "まとめ"}),
}


def command_word(text: str, words: Sequence[Command] = tuple(COMMAND_WORDS)) -> Command:
    """The command `text` is, among `words` (a platform may take only some of them in some
    places: a thread message takes only reset); ASK when it is none of them."""
    word = text.strip().lower()
    for command in words:
        if word in COMMAND_WORDS[command]:
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
    often the sink gets the growing text (None: the chat service's setting).
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

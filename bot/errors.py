"""One small error hierarchy. Each error carries a short Japanese message for users."""

from __future__ import annotations


class RinnaError(Exception):
    """Base of every error this project raises on purpose."""

    user_message = "エラーが発生しました。しばらくしてからもう一度お試しください。"


class ConfigError(RinnaError):
    """A setting is missing or invalid; the message names the environment key."""


class DatabasePathError(ConfigError):
    """DATABASE_PATH names something that is not a SQLite database (a device, a FIFO, another
    kind of file): refused before it is touched, like any invalid setting."""


class ModelLoadError(RinnaError):
    """The model or tokenizer could not be loaded."""


class StorageError(RinnaError):
    """The history database could not be opened or written."""


class StoreUnreachable(StorageError):
    """The database server cannot be reached (down, restarting, the connection lost): a
    retry may help (exit 1 at start), unlike a setting to fix. A message that arrives while
    it lasts (after the store's wait for it) is told to try again later."""

    user_message = "ただいま混み合っています。少し待ってからもう一度お試しください。"


class StoreBusy(StoreUnreachable):
    """The server is reachable, but every connection of the store's pool stayed in use by
    other calls for the whole wait (more store calls at once than DATABASE_POOL_SIZE): as
    transient as an unreachable server, with the same notice, but named for what it is."""


class MessageWithdrawn(RinnaError):
    """The message was deleted (or its writer's data forgotten) while it waited to be
    answered: its text is gone, and its placeholder ends with this notice."""

    user_message = "元のメッセージが削除されたため、回答を取りやめました。"


class OutdatedRequest(RinnaError):
    """A 「もう一度」 whose answer is no longer the newest when its turn comes (a new question
    got there first)."""

    user_message = "新しい質問が先に届いたため、もう一度の回答は取りやめました。"


class GeneratorError(RinnaError):
    """Generation failed inside the worker."""

    user_message = "回答の生成中にエラーが発生しました。もう一度お試しください。"


class BusyError(GeneratorError):
    """The generator is at a bound (the queue, or one person's share): a notice, not a fault."""


class QueueFullError(BusyError):
    user_message = "ただいま混み合っています。少し待ってからもう一度お試しください。"


class GenerationTimeout(GeneratorError):
    user_message = "回答に時間がかかりすぎたため中断しました。もう一度お試しください。"


class GeneratorClosed(GeneratorError):
    user_message = "現在ボットを停止しているため、回答できません。"


class UserBusyError(BusyError):
    """One user already has MAX_PER_USER requests running or waiting: a notice, not an answer."""

    user_message = "前の質問に答えています。終わるまでお待ちください。"


class PromptRefused(RinnaError):
    """A message that would still read as a new turn to the model after escaping, so it is
    not sent to the model at all (it stays stored as written)."""

    user_message = ("この文面はそのままではモデルに渡せません。"
                    "書き方を変えてもう一度お試しください。")


class AttachmentError(RinnaError):
    """An attached file could not be read; the answer carries a short note instead of it."""


class AttachmentTooLarge(AttachmentError):
    """The file is over ATTACHMENT_MAX_BYTES (by its declared size, or as it streamed in)."""


class AttachmentUnavailable(AttachmentError):
    """The file could not be downloaded: a timeout, an HTTP error, or a host (or a redirect
    to one) that is not the platform's own."""


class SettingRefused(RinnaError):
    """A community setting that cannot be set (unknown key, out of the host's bounds, a
    persona too long): nothing changes, and the person is told why in one short line."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class NotPermitted(RinnaError):
    """Someone without the right tried to change a community's settings: nothing changes."""

    user_message = "設定を変更できるのは、このサーバー（ワークスペース）の管理者だけです。"

"""A platform message deleted or edited: what it does to the stored history (the chat service's
`message_deleted` / `message_edited`, which every adapter calls). Deleted text is overwritten in
the store's files (see the store's `delete_delivered`)."""

from __future__ import annotations

import logging

from bot.ports.store import PrivacyStore
from bot.core.prompt import clean_text

log = logging.getLogger(__name__)


class PrivateData:
    """What a platform's deletions and edits do to the stored history."""

    def __init__(self, store: PrivacyStore) -> None:
        self.store = store

    async def message_deleted(self, platform: str, delivery_key: str) -> bool:
        """The platform message is gone: delete the turns stored from it (its own, and those
        of 「rinna に聞く」 about it), and drop it if it still waits to be answered. Returns
        whether any text was deleted."""
        deleted = await self.store.delete_delivered(platform, delivery_key)
        if deleted:
            log.info("%s: message %s was deleted; its stored turn is deleted", platform,
                     delivery_key)
        return bool(deleted)

    async def message_edited(self, platform: str, delivery_key: str, text: str) -> bool:
        """The platform message was edited: the stored turn takes its new text (cleaned as
        the chat service cleans what it stores). An edit to nothing readable changes nothing
        (Discord without the Message Content intent shows no text). Returns whether it changed."""
        cleaned = clean_text(text).strip()
        if not cleaned:
            return False
        changed = await self.store.edit_delivered(platform, delivery_key, cleaned)
        if changed:
            log.info("%s: message %s was edited; its stored turn is updated", platform,
                     delivery_key)
        return changed

"""A bounded memory of recently seen keys: the cheap duplicate check an adapter makes before
it parses a platform event (the chat service's claim in SQLite stays the authority)."""

from __future__ import annotations

from collections import OrderedDict


class RecentKeys:
    """Remembers the last `size` keys; `add` says whether a key is new."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._keys: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def add(self, key: str) -> bool:
        """Remember `key`; False when it was already remembered (a duplicate)."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._keys)

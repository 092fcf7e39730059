"""`rinna-bot migrate-db [--to postgresql://…]`: copy the SQLite history at DATABASE_PATH into
PostgreSQL (--to, or DATABASE_URL), then check every table's rows arrived whole, every column
equal (storage/migrate.py). The SQLite file is first brought to this bot's schema in place.
Safe to run again (it copies nothing twice) and to run before the first PostgreSQL start (the
schema is created). Stop the bot that writes to the SQLite file first, so nothing it writes
afterwards is left behind. Prints one line per table, and the URL only without its password.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from pydantic import SecretStr

from bot.config import Settings
from bot.errors import RinnaError
from bot.service.startup import EXIT_CONFIG, EXIT_OK, EXIT_TRANSIENT, exit_code


def migrate_command(settings: Settings, to: str | None, out: TextIO = sys.stdout) -> int:
    from storage.migrate import copy_history
    from storage.pg_wire import redact

    dsn = to or (settings.database_url.get_secret_value()
                 if isinstance(settings.database_url, SecretStr) else None)
    if not dsn or not dsn.startswith(("postgresql://", "postgres://")):
        print("rinna-bot: migrate-db needs a PostgreSQL URL: --to postgresql://USER:PASSWORD@"
              "HOST:5432/DB, or DATABASE_URL", file=sys.stderr)
        return EXIT_CONFIG
    try:
        copied = asyncio.run(copy_history(settings.database_path, dsn))
    except RinnaError as exc:
        print(f"rinna-bot: {exc}", file=sys.stderr)
        return exit_code(exc)
    for table in copied:
        out.write(f"{table.table}: {table.source} in SQLite, {table.written} copied now, "
                  f"{table.found} found in PostgreSQL\n")
    short = [table.table for table in copied if not table.complete]
    if short:
        print(f"rinna-bot: rows missing or different in PostgreSQL after the copy:"
              f" {', '.join(short)}",
              file=sys.stderr)
        return EXIT_TRANSIENT
    print(f"rinna-bot: {settings.database_path} copied into {redact(dsn)}; every row checked",
          file=sys.stderr)
    return EXIT_OK

"""The house's import rules, read from the source with `ast` (every import, also inside
functions and `if TYPE_CHECKING:` blocks). Imports run one way: service -> adapters -> core ->
engine, and core -> ports <- storage; docs/architecture.md draws it.

- vocabulary (bot/config, errors, conversation, models, precision, setting_values, setting_texts) imports
  nothing else of ours; every part may use it;
- the ports (bot/ports/) import only the vocabulary;
- the engine (bot/engine/) imports no core, port, storage, adapter or service;
- the core (bot/core/) imports no storage, adapter or service, and no torch or transformers;
- storage imports only the vocabulary and the ports (no policy, no adapter);
- an adapter imports no storage, engine or service;
- the service (bot/service/) builds everything and may import anything.

Each rule is also shown to catch a violation in a small made-up tree.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "adapters", "storage")
VOCABULARY = ("bot.config", "bot.errors", "bot.conversation", "bot.models", "bot.precision",
              "bot.setting_values", "bot.setting_texts")
# room -> the rooms of ours it may import (besides itself)
MAY_IMPORT: dict[str, frozenset[str]] = {
    "vocabulary": frozenset(),
    "ports": frozenset({"vocabulary"}),
    "engine": frozenset({"vocabulary"}),
    "core": frozenset({"vocabulary", "ports", "engine"}),
    "storage": frozenset({"vocabulary", "ports"}),
    "adapters": frozenset({"vocabulary", "ports", "core"}),
    "service": frozenset({"vocabulary", "ports", "engine", "core", "storage", "adapters"}),
}
# third-party packages a room must not import (the core runs where torch is not loaded)
FORBIDDEN_LIBRARIES = {"core": ("torch", "transformers")}


def _module_name(root: Path, path: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(root: Path) -> dict[str, set[str]]:
    """Module name -> the modules it imports (absolute names; `from a import b` counts as
    both `a` and `a.b`, since b may be a module)."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = _module_name(root, path)
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        anchor = module.split(".")[:len(module.split(".")) - node.level]
                        base = ".".join([*anchor, *([base] if base else [])])
                    names.add(base)
                    names.update(f"{base}.{alias.name}" for alias in node.names)
            found[module] = names
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def room_of(name: str) -> str | None:
    """The room a module of ours lives in (None: not ours, or the bare `bot` package)."""
    if any(_within(name, v) for v in VOCABULARY):
        return "vocabulary"
    for room in ("ports", "core", "engine", "service"):
        if _within(name, f"bot.{room}"):
            return room
    for package in ("adapters", "storage"):
        if _within(name, package):
            return package
    return None


def violations(root: Path) -> list[str]:
    broken: list[str] = []
    for module, names in imports_of(root).items():
        room = room_of(module)
        if room is None:
            if module != "bot":
                broken.append(f"{module} is in no room: put it in bot/core, engine or service")
            continue
        for name in sorted(names):
            target = room_of(name)
            if target is not None and target != room and target not in MAY_IMPORT[room]:
                broken.append(f"{room} {module} imports {target} ({name})")
            for library in FORBIDDEN_LIBRARIES.get(room, ()):
                if _within(name, library):
                    broken.append(f"{room} {module} imports {library} ({name})")
    return broken


def cycles(root: Path, package: str) -> list[list[str]]:
    """Import cycles among the modules of `package` (imports inside functions and
    TYPE_CHECKING blocks count: they are how a cycle hides)."""
    everything = imports_of(root)
    graph = {module: {name for name in names if name in everything}
             for module, names in everything.items() if _within(module, package)}
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for name in sorted(graph.get(module, ())):
            if state.get(name) == 1:
                found.append([*path[path.index(name):], name])
            elif name not in state:
                visit(name, [*path, name])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_the_project_keeps_the_import_rules() -> None:
    assert violations(ROOT) == []


def test_the_adapters_import_each_other_in_no_loop() -> None:
    assert cycles(ROOT, "adapters") == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for package in (*PACKAGES, "bot/core", "bot/engine", "bot/service", "bot/ports"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(("files", "expected"), [
    ({"adapters/chat_app.py": "from storage.history import HistoryStore\n"},
     "adapters adapters.chat_app imports storage (storage.history)"),
    ({"adapters/chat_app.py": "def f():\n    import storage.history\n"},
     "adapters adapters.chat_app imports storage (storage.history)"),
    ({"adapters/chat_app.py": "from bot.engine.tokenizer import Tokenizer\n"},
     "adapters adapters.chat_app imports engine (bot.engine.tokenizer)"),
    ({"adapters/chat_app.py": "from bot.service.cli import main\n"},
     "adapters adapters.chat_app imports service (bot.service.cli)"),
    ({"storage/db.py": "from adapters.slack_app import SlackHandlers\n"},
     "storage storage.db imports adapters (adapters.slack_app)"),
    ({"storage/db.py": "from bot.core.chat import as_history\n"},
     "storage storage.db imports core (bot.core.chat)"),
    ({"bot/core/chat.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                          "    from adapters.discord_bot import DiscordReply\n"},
     "core bot.core.chat imports adapters (adapters.discord_bot)"),
    ({"bot/core/chat.py": "from storage import history\n"},
     "core bot.core.chat imports storage (storage)"),
    ({"bot/core/chat.py": "from bot.service.metrics import Metrics\n"},
     "core bot.core.chat imports service (bot.service.metrics)"),
    ({"bot/core/chat.py": "def f():\n    import torch\n"},
     "core bot.core.chat imports torch (torch)"),
    ({"bot/engine/batching.py": "from bot.core.prompt import build_prompt\n"},
     "engine bot.engine.batching imports core (bot.core.prompt)"),
    ({"bot/engine/batching.py": "from storage.history import HistoryStore\n"},
     "engine bot.engine.batching imports storage (storage.history)"),
    ({"bot/engine/batching.py": "from bot.ports.records import Delivery\n"},
     "engine bot.engine.batching imports ports (bot.ports.records)"),
    ({"bot/ports/store.py": "from bot.core.chat import ChatService\n"},
     "ports bot.ports.store imports core (bot.core.chat)"),
    ({"bot/config.py": "from bot.core.access import AccessPolicy\n"},
     "vocabulary bot.config imports core (bot.core.access)"),
    ({"bot/helpers.py": "X = 1\n"},
     "bot.helpers is in no room: put it in bot/core, engine or service"),
])
def test_each_rule_catches_its_violation(tmp_path: Path, files: dict[str, str],
                                         expected: str) -> None:
    assert expected in violations(_tree(tmp_path, files))


def test_a_loop_hidden_in_a_function_is_found(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "adapters/one.py": "from adapters.two import x\n",
        "adapters/two.py": "def f():\n    from adapters.one import y\n",
    })
    assert cycles(root, "adapters") == [["adapters.one", "adapters.two", "adapters.one"]]


def test_what_the_rules_allow(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "storage/db.py": "from bot.ports.records import Delivery\nfrom bot.errors import X\n",
        "adapters/chat_app.py": "from bot.core.chat import ChatService\n"
                                "from bot.ports.records import Delivery\n",
        "bot/core/chat.py": "from bot.engine.generator import Generator\n"
                            "from bot.ports.store import ChatStore\n",
        "bot/engine/batching.py": "import torch\nfrom bot.config import Settings\n",
        "bot/service/cli.py": "from adapters.console import run_console\n"
                              "from storage import history\n",
    })
    assert violations(root) == []


def test_platforms_are_named_only_where_they_are_listed() -> None:
    """bot/service/platforms.py is the one list of platforms: start-up's and doctor's
    credential checks reach a platform's identity call through it, never by the platform's
    name; and the privacy commands open storage through `open_store`, not the SQLite module."""
    found = imports_of(ROOT)
    for module in ("bot.service.startup", "bot.service.doctor", "bot.service.cli",
                   "bot.service.privacy"):
        named = {name for name in found[module] if "discord" in name or "slack" in name
                 or name.startswith("adapters.credentials.check_")}
        assert named == set(), (module, named)
    assert not any(_within(name, "storage.history") for name in found["bot.service.privacy"])
    sources = {module: (ROOT / f"{module.replace('.', '/')}.py").read_text(encoding="utf-8")
               for module in ("bot.service.startup", "bot.service.doctor")}
    for module, source in sources.items():
        assert "discord_enabled" not in source and "slack_enabled" not in source, module


MAX_MODULE_LINES = 400


def test_every_module_reads_in_one_sitting() -> None:
    """No module of bot/, adapters/ or storage/ over 400 lines: split along a seam instead."""
    long = {str(path.relative_to(ROOT)): lines for package in PACKAGES
            for path in sorted((ROOT / package).rglob("*.py"))
            if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert long == {}

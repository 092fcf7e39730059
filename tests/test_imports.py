"""The house's import rules, read from the source with `ast` (every import, also inside
functions and `if TYPE_CHECKING:` blocks):

- an adapter imports nothing of `storage`;
- `storage` imports no adapter and nothing of the core's policy (only the vocabulary:
  conversation values, errors, and the ports' records and Protocols);
- the core imports no adapter, and only the service (which builds everything) opens storage.

Each rule is also shown to catch a violation in a small made-up tree.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "adapters", "storage")
# The service: builds everything in main() and may import adapters and storage.
SERVICE = frozenset({"bot.service.cli", "bot.service.assembly", "bot.service.doctor", "bot.service.startup", "bot.service.platforms",
                     "bot.service.privacy", "bot.service.migrate_db"})
# What storage may use of ours besides itself.
VOCABULARY = ("bot.conversation", "bot.errors", "bot.ports")


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


def violations(root: Path) -> list[str]:
    broken: list[str] = []
    for module, names in imports_of(root).items():
        for name in sorted(names):
            if _within(module, "adapters") and _within(name, "storage"):
                broken.append(f"adapter {module} imports storage ({name})")
            if _within(module, "storage"):
                if _within(name, "adapters"):
                    broken.append(f"storage {module} imports an adapter ({name})")
                elif _within(name, "bot") and not any(_within(name, v) for v in VOCABULARY):
                    broken.append(f"storage {module} imports the core ({name})")
            if _within(module, "bot") and module not in SERVICE:
                if _within(name, "adapters"):
                    broken.append(f"core {module} imports an adapter ({name})")
                elif _within(name, "storage"):
                    broken.append(f"core {module} imports storage ({name}): use bot.ports")
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
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(("files", "expected"), [
    ({"adapters/chat_app.py": "from storage.history import HistoryStore\n"},
     "adapter adapters.chat_app imports storage (storage.history)"),
    ({"adapters/chat_app.py": "def f():\n    import storage.history\n"},
     "adapter adapters.chat_app imports storage (storage.history)"),
    ({"storage/db.py": "from adapters.slack_app import SlackHandlers\n"},
     "storage storage.db imports an adapter (adapters.slack_app)"),
    ({"storage/db.py": "from bot.core.chat import as_history\n"},
     "storage storage.db imports the core (bot.core.chat)"),
    ({"bot/core/chat.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from adapters.discord_bot import DiscordReply\n"},
     "core bot.core.chat imports an adapter (adapters.discord_bot)"),
    ({"bot/core/chat.py": "from storage import history\n"},
     "core bot.core.chat imports storage (storage): use bot.ports"),
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
        "adapters/chat_app.py": "from bot.core.chat import ChatService\n",
        "bot/service/cli.py": "from adapters.console import run_console\nfrom storage import history\n",
    })
    assert violations(root) == []


def test_platforms_are_named_only_where_they_are_listed() -> None:
    """bot/service/platforms.py is the one list of platforms: start-up's and doctor's credential
    checks reach a platform's identity call through it, never by the platform's name; and
    the privacy commands open storage through `open_store`, not the SQLite module."""
    found = imports_of(ROOT)
    for module in ("bot.service.startup", "bot.service.doctor", "bot.service.cli", "bot.service.privacy"):
        named = {name for name in found[module] if "discord" in name or "slack" in name
                 or name.startswith("adapters.credentials.check_")}
        assert named == set(), (module, named)
    assert not any(_within(name, "storage.history") for name in found["bot.service.privacy"])
    sources = {module: (ROOT / f"{module.replace('.', '/')}.py").read_text(encoding="utf-8")
               for module in ("bot.service.startup", "bot.service.doctor")}
    for module, source in sources.items():
        assert "discord_enabled" not in source and "slack_enabled" not in source, module

"""Every module path the project tells people (or docker, or make) to run still exists, and the
service's own commands still run: a move that forgets one fails here.

Read from the README, docs/, benchmarks/RESULTS.md, the Dockerfile, compose.yaml, the
Makefile, .ci/run and pyproject.toml's console script; each `python -m X`, `"-m", "X"` and
`$(PY) -m X` names a module that must be importable from the repository root, each source path
the README and docs name must exist, and the harmless forms of the service's commands (the
`rinna-bot` console script's `--help`, the container's health check with metrics off) run.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
          ROOT / "benchmarks" / "RESULTS.md"]
RECIPES = [ROOT / "Dockerfile", ROOT / "compose.yaml", ROOT / "Makefile", ROOT / ".ci" / "run"]
_MODULE = re.compile(r'(?:python3? -m |\$\(PY\) -m |"-m", ")([a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*)')
_PATH = re.compile(r"(?<![\w/.:-])((?:bot|adapters|storage|tests|benchmarks)/[\w/]+\.py)\b")


def documented_modules() -> list[str]:
    found: set[str] = set()
    for path in [*GUIDES, *RECIPES]:
        found.update(_MODULE.findall(path.read_text(encoding="utf-8")))
    return sorted(found)


def documented_paths() -> list[str]:
    found: set[str] = set()
    for path in GUIDES[:-1]:  # RESULTS.md names old revisions' files on purpose
        found.update(_PATH.findall(path.read_text(encoding="utf-8")))
    return sorted(found)


def console_scripts() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return dict(project["scripts"])


def test_the_documents_name_the_service_commands() -> None:
    """The scan finds what it must check (an empty scan would pass everything)."""
    modules = documented_modules()
    assert "bot.service.healthcheck" in modules  # Dockerfile's HEALTHCHECK, docs/operations.md
    assert {"benchmarks.window", "benchmarks.gpu"} <= set(modules)  # the Makefile's benchmarks
    assert "bot/core/front_door.py" in documented_paths()
    assert console_scripts() == {"rinna-bot": "bot.service.cli:main"}


@pytest.mark.parametrize("module", documented_modules())
def test_each_documented_module_exists(module: str) -> None:
    assert importlib.util.find_spec(module) is not None, f"{module} is named but does not exist"


@pytest.mark.parametrize("path", documented_paths())
def test_each_documented_source_path_exists(path: str) -> None:
    assert (ROOT / path).is_file(), f"{path} is named in the README or docs but does not exist"


def test_the_console_script_points_at_a_function() -> None:
    for target in console_scripts().values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "METRICS_PORT"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def test_the_console_script_answers_help() -> None:
    module = console_scripts()["rinna-bot"].partition(":")[0]
    done = _run(module, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: rinna-bot")


def test_the_health_check_runs_with_metrics_off() -> None:
    module = next(m for m in documented_modules() if m.endswith(".healthcheck"))
    done = _run(module)
    assert done.returncode == 0, done.stderr
    assert "metrics off" in done.stdout

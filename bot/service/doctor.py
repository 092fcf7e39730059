"""`rinna-bot doctor`: one screen saying what `run` will do, each line ✓ or ✗ with the fix.

Reads the settings like `run` (and reports `.env` typos like it), asks each configured platform
(bot/service/platforms.py) whether the tokens are accepted (the calls `run` makes; `--offline` skips
them), looks for the model without downloading anything, tries CUDA and bitsandbytes on the
configured device, and opens the database without changing it. Tokens are shown as set or unset, never their values.
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.error
import urllib.request
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from bot.config import Settings, load_settings, unknown_keys
from bot.service.download import cached_model, check_model_dir, check_tokenizer, is_local
from bot.errors import RinnaError
from bot.service.doctor_model import _planned_precision, _precision, engine_vocabulary
from bot.service.logs import setup_logging

@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    what: str
    fix: str = ""
    path: Path | None = None  # what a check found, for the next check (the tokenizer file)
    engine_kind: str | None = None  # an engine check's finding: "llamacpp" for llama-server

    def line(self) -> str:
        if self.ok:
            return f"✓ {self.what}"
        return f"✗ {self.what}" + (f" → {self.fix}" if self.fix else "")


def doctor(out: TextIO = sys.stdout, *, offline: bool = False) -> int:
    """Print every check; 0 when all pass, 1 otherwise. `offline`: no calls to the platforms."""
    typos = [Check(False, line, "correct the key's name (see .env.example)")
             for line in unknown_keys()]
    try:
        settings = load_settings()
    except RinnaError as exc:
        for problem in [*typos, *(Check(False, f"settings: {line}", "fix it in .env or the "
                                        "environment (see .env.example)")
                                  for line in str(exc).splitlines())]:
            print(problem.line(), file=out)
        return 1
    setup_logging("WARNING", settings.secret_values())
    failed = 0
    for check in [*typos, *checks(settings, offline=offline)]:
        print(check.line(), file=out, flush=True)
        failed += not check.ok
    print(f"{'all checks passed' if not failed else f'{failed} to fix'}; "
          f"`rinna-bot run` {'is ready' if not failed else 'may not work as intended'}", file=out)
    return 1 if failed else 0


def checks(settings: Settings, *, offline: bool = False) -> Iterator[Check]:
    yield _settings(settings)
    yield _platforms(settings)
    if not offline:
        yield from _credentials(settings)
    if settings.engine_urls:  # the model runs on the engine: no weights, GPU or bitsandbytes
        yield (tokenizer := _tokenizer(settings))
        for url in settings.engine_urls:
            yield (engine := _engine(settings, url))
            # vLLM's POST /tokenize; llama-server's reads another field and answers [] (its
            # own line compares n_vocab instead)
            if (tokenizer.ok and engine.ok and tokenizer.path is not None
                    and engine.engine_kind != "llamacpp"):
                yield engine_vocabulary(settings, url, tokenizer.path)
    else:
        yield _model_choice(settings)
        yield _model(settings)
        yield _device(settings)
        precision = _precision(settings)
        if precision is not None:
            yield precision
        yield _bitsandbytes(settings)
    yield (_database(settings.database_path) if settings.database_url is None
           else _postgres(settings))
    yield _metrics(settings)


def _settings(settings: Settings) -> Check:
    tokens = ", ".join(f"{name.upper()} {'set' if getattr(settings, name) else 'unset'}"
                       for name in settings.secret_fields)
    where = ".env and the environment" if Path(".env").is_file() else "the environment (no .env)"
    return Check(True, f"settings read from {where}: MODEL_ID={settings.model_id}, "
                 f"QUANTIZATION={settings.quantization}, DEVICE={settings.device}; {tokens}")


def _platforms(settings: Settings) -> Check:
    from bot.service.platforms import configured_platforms, how_to_configure

    started = [entry.shown(settings) for entry in configured_platforms(settings)]
    if not started:
        return Check(False, "no platform configured: `run` opens the terminal chat",
                     how_to_configure())
    return Check(True, "platforms that will start: " + ", ".join(started))


def _model_choice(settings: Settings) -> Check:
    from bot.models import ALIASES

    others = ", ".join(f"MODEL={a.name} ({a.download})" for a in ALIASES.values())
    return Check(True, f"model: {settings.model_id} ({settings.model_reason}); aliases: {others}")


def _credentials(settings: Settings) -> list[Check]:
    """The identity calls `run` makes while the model loads (adapters/credentials.py)."""
    import asyncio

    from adapters.credentials import PlatformUnreachable
    from bot.errors import ConfigError
    from bot.service.platforms import configured_platforms, credential_findings

    async def ask() -> list[Check]:
        found: list[Check] = []
        for entry in configured_platforms(settings):
            try:
                found.extend(Check(ok, line)
                             for ok, line in await credential_findings(entry, settings))
            except ConfigError as exc:
                found.append(Check(False, str(exc)))
            except PlatformUnreachable as exc:
                found.append(Check(False, str(exc), "check the network or the platform's "
                                   "status page; `rinna-bot doctor --offline` skips this"))
        return found

    return asyncio.run(ask())


def _model(settings: Settings) -> Check:
    if is_local(settings):
        found = check_model_dir(Path(settings.model_id).expanduser())
        where = "local directory"
    else:
        path = cached_model(settings)
        if path is None:
            from bot.models import ALIASES, alias_of

            alias = alias_of(settings.model_id)
            size = ALIASES[alias].download.split(" (")[0] if alias else "about 7 GB"
            return Check(False, f"model {settings.model_id} (revision "
                         f"{settings.model_revision}) is not in the Hugging Face cache",
                         f"run `rinna-bot download` ({size}) before `run`")
        found = check_model_dir(path)
        where = "in the cache"
    if not found.ok:
        return Check(False, f"model {where} {found.path}: " + "; ".join(found.problems),
                     "run `rinna-bot download` again, or copy the directory again")
    return Check(True, f"model {where}: {found.describe()}")


def _tokenizer(settings: Settings) -> Check:
    """With ENGINE_URL, `run` needs only MODEL_ID's spiece.model (looked for, not fetched)."""
    if is_local(settings):
        path: Path | None = Path(settings.model_id).expanduser() / "spiece.model"
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(settings.model_id, "spiece.model",
                                       revision=settings.model_revision)
        path = Path(found) if isinstance(found, str) else None
    if path is None or not path.is_file():
        return Check(False, f"tokenizer: spiece.model of {settings.model_id} (revision "
                     f"{settings.model_revision}) is not there", "run `rinna-bot download` (with "
                     "ENGINE_URL set it fetches spiece.model alone), or set MODEL_ID to a "
                     "directory holding it")
    problems = check_tokenizer(path)
    if problems:
        return Check(False, f"tokenizer {path}: {problems[0]}", "fetch it again")
    return Check(True, f"tokenizer {path}; ENGINE_URL is set, so no local model, GPU or "
                 "bitsandbytes is needed", path=path)


def _engine(settings: Settings, url: str) -> Check:
    """What the engine at `url` serves (`GET /v1/models`), as `run` asks at start."""
    from bot.engine.remote import base_url, display_url

    shown, model = display_url(url), settings.engine_model or settings.model_id
    headers = {}
    if settings.engine_api_key is not None:
        headers["Authorization"] = f"Bearer {settings.engine_api_key.get_secret_value()}"
    request = urllib.request.Request(base_url(url) + "/models", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - http(s) only
            answer = json.load(response)
            served = [m.get("id") for m in answer.get("data", [])]
    except urllib.error.HTTPError as exc:
        fix = ("check ENGINE_API_KEY (vllm serve --api-key)" if exc.code in (401, 403)
               else "check ENGINE_URL")
        return Check(False, f"engine {shown}: GET /models answered {exc.code}", fix)
    except (urllib.error.URLError, OSError, ValueError, AttributeError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        return Check(False, f"engine {shown}: not reachable ({reason})", "start the vLLM "
                     "server (docs/vllm.md) or fix ENGINE_URL; `run` starts anyway and retries")
    if settings.engine_kind != "vllm" and (llamacpp := _llamacpp_engine(settings, shown, answer)):
        return llamacpp
    if model not in served:
        return Check(False, f"engine {shown} serves {served}, not {model!r}",
                     "set ENGINE_MODEL to the served name (vllm serve --served-model-name)")
    return Check(True, f"engine {shown}: serves {model}")


def _llamacpp_engine(settings: Settings, shown: str, answer: dict) -> Check | None:
    """llama-server's line (None when the server is not llama-server): its model, context
    per slot, and whether its vocabulary is ours."""
    from bot.engine.remote_llamacpp import server_info

    info = server_info(answer)
    if info.kind != "llamacpp":
        return None
    model = settings.engine_model or settings.model_id
    what = (f"engine {shown}: llama-server, model {', '.join(info.models)}, "
            f"{info.slot_context} tokens of context per slot")
    ours = _our_vocab(settings)
    if info.vocab is not None and ours is not None and info.vocab != ours:
        return Check(False, f"{what}; its vocabulary has {info.vocab} ids, ours {ours}: not "
                     "this model", "serve the GGUF written by `rinna-bot export-gguf`",
                     engine_kind="llamacpp")
    if info.slot_context is not None and info.slot_context < settings.context_tokens:
        return Check(False, f"{what}, less than CONTEXT_TOKENS={settings.context_tokens}",
                     f"start llama-server with -np N -c N*{settings.context_tokens}",
                     engine_kind="llamacpp")
    if model not in info.models:
        return Check(False, f"{what}; it is not named {model!r}",
                     f"start llama-server with --alias {model} or set ENGINE_MODEL",
                     engine_kind="llamacpp")
    return Check(True, what + ("" if ours is None else f", vocabulary of {ours} ids as ours"),
                 engine_kind="llamacpp")


def _our_vocab(settings: Settings) -> int | None:
    """The size of MODEL_ID's sentencepiece vocabulary, if spiece.model is at hand."""
    import sentencepiece as spm

    if is_local(settings):
        path = Path(settings.model_id).expanduser() / "spiece.model"
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(settings.model_id, "spiece.model",
                                       revision=settings.model_revision)
        path = Path(found) if isinstance(found, str) else Path("/nonexistent")
    try:
        return spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()
    except (OSError, RuntimeError):
        return None


def _torch_device(settings: Settings) -> tuple[object, str | None]:
    """(torch.device, None) or (None, the problem)."""
    import torch

    setting = settings.device
    if setting == "cpu":
        return torch.device("cpu"), None
    if not torch.cuda.is_available():
        if setting == "auto":
            return torch.device("cpu"), None
        return None, f"DEVICE={setting} but CUDA is not available"
    device = torch.device("cuda" if setting == "auto" else setting)
    if device.index is not None and device.index >= torch.cuda.device_count():
        return None, f"DEVICE={setting} but there are {torch.cuda.device_count()} CUDA devices"
    return device, None


def _device(settings: Settings) -> Check:
    import torch

    device, problem = _torch_device(settings)
    build = f"torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}"
    if problem is not None:
        return Check(False, f"{problem} ({build})", "check the NVIDIA driver (nvidia-smi) and "
                     "that the container has the GPU, or set DEVICE=cpu")
    if device.type == "cpu":  # type: ignore[attr-defined]
        if settings.device == "auto":
            return Check(False, f"no CUDA device: the model will run on the CPU, many times "
                         f"slower ({build})", "check the NVIDIA driver (nvidia-smi) and the "
                         "container's GPU reservation, or set DEVICE=cpu to accept the CPU")
        return Check(True, f"DEVICE=cpu: the model runs on the CPU, slowly ({build})")
    index = device.index or 0  # type: ignore[attr-defined]
    free, total = torch.cuda.mem_get_info(index)
    name = torch.cuda.get_device_name(index)
    return Check(True, f"CUDA device cuda:{index}: {name}, {free / 1024**3:.1f} GiB free of "
                 f"{total / 1024**3:.1f} GiB ({build})")


def _bitsandbytes(settings: Settings) -> Check:
    """A layer of the precision that will load (the checkpoint's own where it is saved
    quantised, whatever QUANTIZATION says), quantised and run on the device."""
    from bot.precision import Precision

    device, problem = _torch_device(settings)
    wanted = _planned_precision(settings, device)
    if wanted is not None and not wanted.quantised:
        return Check(True, f"bitsandbytes: not used ({wanted.label})")
    if problem is not None:
        return Check(False, f"bitsandbytes: not tried ({problem})", "fix DEVICE first")
    wanted = wanted or Precision.NF4  # the model is not here yet: what MODEL=ppo-4bit needs
    try:
        import bitsandbytes as bnb
        import torch

        dtype = torch.float16 if device.type == "cuda" else torch.float32  # type: ignore[attr-defined]
        if wanted is Precision.INT8:
            layer = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(64, 64, compute_dtype=dtype, quant_type=wanted.value)
        layer = layer.to(device)  # quantizes the weights on that device
        with torch.no_grad():
            result = layer(torch.ones(2, 64, dtype=dtype, device=device))
        if not bool(torch.isfinite(result).all()):
            raise RuntimeError("non-finite output")
    except Exception as exc:  # noqa: BLE001 - any failure here is the answer to the check
        return Check(False, f"bitsandbytes {wanted.label} on {device}: "
                     f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                     "reinstall bitsandbytes for this CUDA, or choose an unquantised model "
                     "and precision (MODEL=ppo with QUANTIZATION=auto)")
    return Check(True, f"bitsandbytes {bnb.__version__}: {wanted.label} works on {device}")


def _database(path: Path) -> Check:
    from bot.errors import DatabasePathError
    from storage.files import verify_database_file
    from storage.schema import SCHEMA_VERSION

    if not os.path.lexists(path):
        parent = next((p for p in path.absolute().parents if p.exists()), Path("/"))
        if os.access(parent, os.W_OK):
            return Check(True, f"database {path}: will be created at start (schema "
                         f"{SCHEMA_VERSION})")
        return Check(False, f"database {path}: cannot be created ({parent} is not writable)",
                     "set DATABASE_PATH to a writable place, or fix the directory's owner")
    try:  # what the store refuses at start (a device, a FIFO, an empty or foreign file)
        verify_database_file(path)
    except DatabasePathError as exc:
        return Check(False, f"database: {exc}")
    try:
        with sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=5) as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            db.execute("BEGIN IMMEDIATE")  # takes the write lock, then gives it back
            db.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return Check(False, f"database {path}: not writable ({exc})",
                     "fix the file's and directory's permissions, or stop what holds it locked")
    if version > SCHEMA_VERSION:
        return Check(False, f"database {path}: schema {version} is newer than this version's "
                     f"{SCHEMA_VERSION}", "upgrade rinna-bot, or restore a backup")
    state = "current" if version == SCHEMA_VERSION else f"migrated to {SCHEMA_VERSION} at start"
    return Check(True, f"database {path}: writable, schema {version} ({state})")


def _postgres(settings: Settings) -> Check:
    """DATABASE_URL: the connection, the server's version, the schema version (read only;
    the URL shown without its password)."""
    import asyncio

    from storage.pg_wire import redact
    from storage.postgres import probe
    from storage.schema import SCHEMA_VERSION

    assert settings.database_url is not None
    dsn = settings.database_url.get_secret_value()
    try:
        server, version = asyncio.run(probe(dsn))
    except RinnaError as exc:
        return Check(False, f"database: {exc}", "start PostgreSQL, or fix DATABASE_URL's host, "
                     "port, user, password or database")
    shown = f"database {redact(dsn)}: PostgreSQL {server}"
    if version > SCHEMA_VERSION:
        return Check(False, f"{shown}, schema {version} is newer than this version's "
                     f"{SCHEMA_VERSION}", "upgrade rinna-bot, or use a database of its version")
    state = ("current" if version == SCHEMA_VERSION
             else f"created at start ({SCHEMA_VERSION})" if version == 0
             else f"migrated to {SCHEMA_VERSION} at start")
    return Check(True, f"{shown}, schema {version} ({state})")


def _metrics(settings: Settings) -> Check:
    if settings.metrics_port is None:
        return Check(True, "metrics: off (set METRICS_PORT to serve /metrics and /healthz)")
    return Check(True, f"metrics: http://{settings.metrics_host}:{settings.metrics_port}"
                 "/metrics and /healthz")

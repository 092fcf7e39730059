"""A real llama-server for `make test-llamacpp`, the recorder and the benchmark: started on a
free port with -np N -c N*2048 (2048 tokens per slot, the model's context), waited for on
/health, stopped at the end; and the tiny model exported with `rinna-bot export-gguf`."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

from bot.engine.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
SLOT_CONTEXT = 2048


def export_tiny(directory: Path, dtype: str = "f32", **shape: int) -> tuple[Path, Tokenizer]:
    """The tiny model (tests/tiny_model.py) built in `directory`, and its GGUF."""
    from tests.tiny_model import build_tiny_model

    model = build_tiny_model(directory / "model", **shape)
    out = export_with_command(model, directory / f"tiny-{dtype}.gguf", dtype)
    return out, Tokenizer.from_file(model / "spiece.model")


def export_with_command(model: Path, out: Path, dtype: str = "f32") -> Path:
    """`MODEL_ID=model rinna-bot export-gguf out --dtype dtype`, as a person runs it."""
    env = {**os.environ, "MODEL_ID": str(model), "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "bot.service.cli", "export-gguf", str(out), "--dtype", dtype],
                   env=env, check=True, capture_output=True, cwd=out.parent)
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LlamaServer:
    def __init__(self, bin_dir: Path, gguf: Path, *, slots: int = 1, threads: int = 2,
                 alias: str | None = None, log: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._command = [str(bin_dir / "llama-server"), "-m", str(gguf), "--host", "127.0.0.1",
                         "--port", str(self.port), "-np", str(slots),
                         "-c", str(slots * SLOT_CONTEXT), "-t", str(threads), "--no-repack",
                         "--slots", "--no-webui"]
        if alias:
            self._command += ["--alias", alias]
        self._log = log
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LlamaServer:
        out = open(self._log, "wb") if self._log else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(self._command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the server's own readiness, asked until ready
            if self._process.poll() is not None:
                raise RuntimeError(f"llama-server exited ({self._process.returncode}): "
                                   f"{' '.join(self._command)}")
            if self._healthy():
                return self
            self._process_wait(0.1)
        self.__exit__(None, None, None)
        raise TimeoutError("llama-server did not become healthy")

    def _process_wait(self, seconds: float) -> None:
        assert self._process is not None
        try:
            self._process.wait(seconds)  # returns early if the server dies
        except subprocess.TimeoutExpired:
            pass

    def _healthy(self) -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            connection.request("GET", "/health")
            response = connection.getresponse()
            return response.status == 200 and json.loads(response.read()).get("status") == "ok"
        except (OSError, http.client.HTTPException, ValueError):
            return False

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

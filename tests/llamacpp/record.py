"""Record a real llama-server's answers as the fixtures tests/fake_llamacpp.py is checked
against (tests/fixtures/llamacpp/). Run by `make test-llamacpp` when the fixtures are missing,
or by hand: `python -m tests.llamacpp.record BIN_DIR OUT_DIR` (it exports the tiny model and
starts the server itself).

Raw HTTP through http.client, so the recordings are the bytes the server sent: a seeded
stream, a stream forced (by a grammar) through an emoji the tiny vocabulary only has as byte
pieces, an abort (then /slots), what happens to a connection after a streamed reply, and
/v1/models and /props.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

from tests.llamacpp.server import LlamaServer, export_tiny

PROMPT = "ユーザー: 猫は何ですか?<NL>システム: "


def _post(port: int, path: str, body: dict) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return connection.getresponse(), connection


def _get(port: int, path: str) -> object:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", path)
    return json.loads(connection.getresponse().read())


def record(server: LlamaServer, ids: list[int], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    port = server.port
    base = {"prompt": ids, "stream": True, "return_tokens": True, "temperature": 0.7,
            "top_k": 50, "samplers": ["penalties", "top_k", "temperature"],
            "repeat_penalty": 1.1, "repeat_last_n": len(ids) + 16, "cache_prompt": True}
    response, connection = _post(port, "/completion", {**base, "n_predict": 12, "seed": 1})
    raw = response.read()
    headers = dict(response.getheaders())
    # Is the connection still usable after the streamed reply (it said keep-alive)?
    try:
        connection.request("GET", "/health")
        reuse = f"answered {connection.getresponse().status}"
    except (http.client.HTTPException, OSError) as exc:
        reuse = f"failed: {type(exc).__name__}"
    (out / "stream.txt").write_bytes(raw)
    # The same request unstreamed: every id it generated (the stream holds some back)
    response, _ = _post(port, "/completion", {**base, "n_predict": 12, "seed": 1,
                                              "stream": False})
    (out / "stream-ids.json").write_text(json.dumps(json.loads(response.read())["tokens"]))
    (out / "stream-headers.json").write_text(json.dumps({"status": response.status,
                                                        "headers": headers,
                                                        "reuse_after_reply": reuse}, indent=1))
    grammar = 'root ::= "猫は😀" [^\\x00]*'
    response, _ = _post(port, "/completion", {**base, "n_predict": 8, "seed": 2,
                                              "grammar": grammar})
    (out / "stream-emoji.txt").write_bytes(response.read())
    response, connection = _post(port, "/completion", {**base, "n_predict": 1000, "seed": 3})
    first = b""
    while first.count(b"\n\n") < 2:
        first += response.read1(4096) if hasattr(response, "read1") else response.read(64)
    connection.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-reply
    connection.close()
    (out / "abort-first-events.txt").write_bytes(first)
    slots = _wait_idle(port)
    (out / "slots-after-abort.json").write_text(json.dumps(slots, indent=1, ensure_ascii=False))
    (out / "models.json").write_text(json.dumps(_get(port, "/v1/models"), indent=1,
                                                ensure_ascii=False))
    props = _get(port, "/props")
    assert isinstance(props, dict)
    keep = ("total_slots", "model_alias", "build_info", "default_generation_settings")
    (out / "props.json").write_text(json.dumps({k: props.get(k) for k in keep}, indent=1,
                                               ensure_ascii=False))


def _wait_idle(port: int, timeout_s: float = 30.0) -> object:
    """GET /slots until no slot is processing: the condition itself, asked again until a
    deadline (the server offers nothing to wait on)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        slots = _get(port, "/slots")
        if isinstance(slots, list) and not any(s.get("is_processing") for s in slots):
            return slots
    raise TimeoutError("the slot stayed busy after the client went away")


def main(argv: list[str]) -> int:
    bin_dir, out = Path(argv[0]), Path(argv[1])
    with tempfile.TemporaryDirectory() as work:
        gguf, tokenizer = export_tiny(Path(work))
        with LlamaServer(bin_dir, gguf, slots=2) as server:
            record(server, tokenizer.encode(PROMPT), out)
    print(f"recorded into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

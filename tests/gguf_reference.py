"""GPT-NeoX run straight from a GGUF file, the way llama.cpp reads one (its `gptneox` graph):
`attn_qkv` rows as [all q, all k, all v], NeoX rotary on the first `rope.dimension_count`
dims of each head, layer norms with bias, exact GELU, sequential or parallel residual.

Written from llama.cpp's graph, not from transformers, so comparing its logits with
transformers' checks the export (names, QKV order, rotary size, norms) without llama.cpp.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import torch


class GgufModel:
    def __init__(self, path: Path) -> None:
        reader = gguf.GGUFReader(str(path))
        self.fields = {name: field.contents() for name, field in reader.fields.items()}
        self.tensors = {t.name: torch.from_numpy(t.data.astype("float32").copy())
                        for t in reader.tensors}
        arch = self.fields["general.architecture"]
        self.layers = self.fields[f"{arch}.block_count"]
        self.heads = self.fields[f"{arch}.attention.head_count"]
        self.rotary = self.fields[f"{arch}.rope.dimension_count"]
        self.base = self.fields.get(f"{arch}.rope.freq_base", 10000.0)
        self.eps = self.fields[f"{arch}.attention.layer_norm_epsilon"]
        self.parallel = self.fields.get(f"{arch}.use_parallel_residual", True)

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, x.shape[-1:], self.tensors[f"{name}.weight"],
                                              self.tensors[f"{name}.bias"], self.eps)

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ self.tensors[f"{name}.weight"].T + self.tensors[f"{name}.bias"]

    def _rope(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, heads, head_dim]
        half = self.rotary // 2
        inv = self.base ** (-torch.arange(half, dtype=torch.float64) * 2 / self.rotary)
        angle = torch.arange(x.shape[0], dtype=torch.float64)[:, None] * inv[None, :]
        cos, sin = angle.cos().float()[:, None, :], angle.sin().float()[:, None, :]
        one, two = x[..., :half], x[..., half:self.rotary]
        return torch.cat([one * cos - two * sin, two * cos + one * sin, x[..., self.rotary:]],
                         dim=-1)

    def logits(self, ids: list[int]) -> torch.Tensor:
        """Logits at every position, [T, vocab]."""
        x = self.tensors["token_embd.weight"][torch.tensor(ids)]
        steps, hidden = x.shape
        head_dim = hidden // self.heads
        mask = torch.full((steps, steps), float("-inf")).triu(1)
        for n in range(self.layers):
            block = f"blk.{n}"
            q, k, v = self._linear(self._norm(x, f"{block}.attn_norm"),
                                   f"{block}.attn_qkv").split(hidden, dim=-1)
            q, k, v = (t.reshape(steps, self.heads, head_dim) for t in (q, k, v))
            q, k = self._rope(q), self._rope(k)
            scores = torch.einsum("qhd,khd->hqk", q, k) / head_dim ** 0.5 + mask
            attended = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(steps, hidden)
            attention = self._linear(attended, f"{block}.attn_output")
            ffn_in = x if self.parallel else x + attention
            up = torch.nn.functional.gelu(self._linear(self._norm(ffn_in, f"{block}.ffn_norm"),
                                                       f"{block}.ffn_up"))
            x = x + attention + self._linear(up, f"{block}.ffn_down")
        return self._norm(x, "output_norm") @ self.tensors["output.weight"].T

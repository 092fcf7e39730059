"""The tests' tiny model is the package's (bot/engine/tiny_model.py, which `rinna-bot demo` uses)."""

from bot.engine.tiny_model import build_tiny_model, build_tokenizer

__all__ = ["build_tiny_model", "build_tokenizer"]

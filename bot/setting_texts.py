"""The words shown about settings (vocabulary: imports nothing of ours): what each kind of
wrong value means, an example of a right value, and the shape each token must have, checked
before anything connects. bot/config.py builds its one-line errors from these."""

from __future__ import annotations

import re

# What each pydantic error type means, in plain words ({...}: the error's own details).
PROBLEMS = {
    "literal_error": "must be one of {expected}",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_parsing": "must be a number",
    "bool_parsing": "must be true or false",
    "greater_than": "must be more than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
    "string_pattern_mismatch": "has the wrong form",
    "value_error": "{error}",
    "path_type": "must be a file path",
}

# Right values to show next to an error, where the default is none or not a good example.
EXAMPLES = {
    "device": "cuda",
    "discord_token": "MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbCdE.abcdefghijklmnopqrstuvwxyz0123",
    "slack_bot_token": "xoxb-1234-5678-abcd",
    "slack_app_token": "xapp-1-A0123-456-abc",
    "slack_signing_secret": "8f742231b10e8888abcd99aaabbb85a5",
    "engine_url": "http://vllm:8000/v1",
    "retention_days": "30",
    "metrics_port": "9100",
    "allow_dms": "false",
    "community_keys": "persona,enabled,mention_only",
    "persona": "keigo",
    "lease_s": "30",
    "discord_shard_count": "2",
    "discord_shard_ids": "0,1",
}

# Token shapes, checked before anything connects: (pattern, what a right value looks like).
TOKEN_SHAPES = {
    "discord_token": (re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"),
                      "is not a Discord bot token (three parts separated by dots; copy it from "
                      "the Developer Portal, Bot > Reset Token)"),
    "slack_bot_token": (re.compile(r"(xoxe\.)?xoxb-[A-Za-z0-9-]+"),
                        "is not a Slack bot token (it starts with xoxb-, or xoxe.xoxb- when "
                        "rotating: OAuth & Permissions > Bot User OAuth Token)"),
    "slack_app_token": (re.compile(r"xapp-[A-Za-z0-9-]+"),
                        "is not a Slack app-level token (it starts with xapp-: Basic "
                        "Information > App-Level Tokens, scope connections:write)"),
    "slack_signing_secret": (re.compile(r"[0-9a-fA-F]{32}"),
                             "is not a Slack signing secret (32 hex digits: Basic Information "
                             "> App Credentials > Signing Secret)"),
}

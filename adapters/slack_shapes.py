"""The shape of what Slack sends, checked before bolt sees a signed request: a request in any
other shape is refused with a 400 and one log line, never a listener's traceback and a 500.

Only what the listeners read is checked: an event callback's `event` is an object; a button
press has a list of actions, each an object with an `action_id`, and its `message`, `user`,
`channel`, `team` are objects where present; a message shortcut's `message` is an object; a
slash command names its channel and its user.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_OBJECTS = ("user", "channel", "team", "container")


class MalformedRequest(ValueError):
    """A signed request that is not in a shape Slack sends (the reason is for the log)."""


def check_json(body: Mapping[str, Any]) -> None:
    """An Events API request body."""
    if ("event" in body or body.get("type") == "event_callback") and not isinstance(
            body.get("event"), Mapping):
        raise MalformedRequest("event is not an object")


def check_payload(payload: Mapping[str, Any]) -> None:
    """An interactivity payload (button press, shortcut, ...)."""
    kind = payload.get("type")
    for name in _OBJECTS:
        if name in payload and not isinstance(payload[name], Mapping):
            raise MalformedRequest(f"{name} is not an object")
    if kind == "block_actions":
        actions = payload.get("actions")
        if not isinstance(actions, list) or not actions:
            raise MalformedRequest("actions is not a list")
        for action in actions:
            if not isinstance(action, Mapping) or not isinstance(action.get("action_id"), str):
                raise MalformedRequest("an action without action_id")
        if "message" in payload and not isinstance(payload["message"], Mapping):
            raise MalformedRequest("message is not an object")
    elif kind == "message_action" and not isinstance(payload.get("message"), Mapping):
        raise MalformedRequest("message is not an object")


def check_command(form: Mapping[str, Any]) -> None:
    """A slash command's form (values as parsed: lists of strings, or bolt's strings)."""
    for name in ("channel_id", "user_id"):
        value = form.get(name)
        if isinstance(value, list):
            value = value[0] if value else None
        if not isinstance(value, str) or not value:
            raise MalformedRequest(f"command without {name}")


def check_body(body: Mapping[str, Any]) -> None:
    """Any request as bolt parsed it (the Socket Mode path, which has no HTTP layer)."""
    if "event" in body or body.get("type") == "event_callback":
        check_json(body)
    elif "command" in body and "type" not in body:
        check_command(body)
    else:
        check_payload(body)

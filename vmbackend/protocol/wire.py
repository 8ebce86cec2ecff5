"""The protocol's wire rules for every body, both ways: bounds checked before decoding, strict JSON.

A body is refused (`Rejected`) before json sees it when it is too big or nests too deep, and
json itself gets no NaN/Infinity and no number too long for int(); replies and bodies are
encoded one way (compact, sorted keys).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

PROTOCOL_VERSION = 1


MAX_BODY_BYTES = 64 * 1024


MAX_DEPTH = 32  # deepest nesting of objects/arrays in any body (create-vm needs 3)


MAX_INT_DIGITS = 20  # 2**63-1 has 19 digits; longer numbers are refused before int() sees them


class Rejected(Exception):
    """The message cannot be served; `reason` says why (no secrets in it)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_ESCAPE = re.compile(r"\\.", re.DOTALL)  # \" or \\ inside a string


_STRING = re.compile(r'"[^"]*"')  # once escapes are gone; linear, no backtracking


_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def too_deep(text: str) -> bool:
    """True when objects/arrays nest deeper than MAX_DEPTH (brackets inside strings don't count).

    json itself recurses once per level, so this runs first: drop escapes, then strings, then
    everything but brackets, and sum the steps with C-level iterators (no Python loop per char)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > MAX_DEPTH


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError("number too long")
    return int(text)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def has_bad_string(value: Any) -> bool:
    """A NUL byte or a lone surrogate anywhere (keys too): neither may reach a file or a database."""
    if isinstance(value, str):
        if "\x00" in value:
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(has_bad_string(k) or has_bad_string(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_bad_string(item) for item in value)
    return False


def load_body(body: bytes, error: type[Rejected]) -> dict[str, Any]:
    """Decode one body to a JSON object, or raise `error` with a reason. Never anything else."""
    if not isinstance(body, bytes | bytearray):
        raise error("body must be bytes")
    if len(body) > MAX_BODY_BYTES:
        raise error(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise error("body is not UTF-8 JSON") from None
    if too_deep(text):
        raise error(f"body nests deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise error("body is not UTF-8 JSON (or has a number longer than 20 digits)") from None
    if not isinstance(data, dict):
        raise error("body must be a JSON object")
    if has_bad_string(data):
        raise error("body has a NUL byte or an unpaired surrogate in a string")
    return data


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode("utf-8")


def success(response: Any) -> bytes:
    """A reply body for a served request."""
    return dumps({"execution-info": {"status": "success"}, "response": response})


def error(reason: str) -> bytes:
    """A reply body for a refused or failed request."""
    return dumps({"execution-info": {"status": "error", "reason": reason}})


def encode(body: dict[str, Any]) -> bytes:
    """The bytes on the wire for a command or event dict."""
    return dumps(body)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class MalformedEvent(Rejected):
    """The body is not a valid event of protocol version 1; the shop dead-letters it."""


def event_str(
    data: dict[str, Any],
    name: str,
    limit: int,
    *,
    required: bool = False,
    pattern: re.Pattern[str] | None = None,
    what: str = "",
) -> str:
    value = data.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value) or len(value) > limit:
        kind = "a non-empty string" if required else "a string"
        raise MalformedEvent(f"{name} must be {kind} of at most {limit} characters")
    if value and pattern is not None and not pattern.fullmatch(value):
        raise MalformedEvent(f"{name} must be {what}")
    return value


def event_int(data: dict[str, Any], name: str, high: int, *, required: bool = False) -> int:
    if name not in data and not required:
        return 0
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise MalformedEvent(f"{name} must be an integer between 0 and {high}")
    return value

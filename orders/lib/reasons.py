"""What a customer is told of a failure. A host's reason (instance.failed, command_failed, a
dead-lettered create-vm) may name internal addresses, host ids, paths or ports; staff read it in
full in the admin, the customer reads it only when it is plain words.

`for_customer` is an allowlist, not a scrubber: a reason passes only if it is letters, spaces, a
little punctuation and small standalone numbers ("within 10 minutes"; no other digit, so no
address or port; no `/`, `.` or `_` inside, so no path or host name; a colon only before a
space, so no IPv6 address) and names none of the `private` words (the host ids we know).
Anything else becomes the caller's generic text: failing safe costs a less precise message,
never a leak.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9 ,;:'()-]{0,199}")
_SMALL_NUMBER = re.compile(r"(?<![\w-])\d{1,3}(?![\w-])")  # "within 10 minutes"
_ADDRESS_COLON = re.compile(r":(?!\s|$)")  # prose has "word: word"; IPv6 has "fe80::a" or "a:b"
_WORD = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)*")


def for_customer(reason: str, *, private: Iterable[str], generic: str) -> str:
    """`reason` if it is safe to show (without a final period), else `generic`."""
    text = reason.strip().removesuffix(".")
    if (
        not _PLAIN.fullmatch(text)
        or _ADDRESS_COLON.search(text)
        or any(c.isdigit() for c in _SMALL_NUMBER.sub("", text))
    ):
        return generic
    hidden = {word.casefold() for word in private if word}
    words = {word.casefold() for word in _WORD.findall(text)}
    parts = {part for word in words for part in word.split("-")}
    if hidden & (words | parts) or any(h in text.casefold() for h in hidden if len(h) > 3):
        return generic
    return text

"""Renamed settings, and how old records and files are still read.

"seed" used to name four things: the random seed, the seed post's adapter method, its placement
and its freeze policy. Only the random seed keeps the word now; the old spellings of the other
three are read as the new ones (with one line on stderr, once per process).
"""

from __future__ import annotations

import sys

RENAMED: dict[str, dict[str, str]] = {
    "method": {"seed": "residual"},  # the seed post's residual adapter after relu(proj)
    "placement": {"seed": "post-proj"},  # the slot between relu(proj) and fc
    "policy": {"seed": "conv2"},  # conv2 + adapters + the new head
}
_told: set[tuple[str, str]] = set()


def modern(field: str, value):
    """The current spelling of a setting's value (unchanged when it is not a renamed one)."""
    new = RENAMED.get(field, {}).get(value) if isinstance(value, str) else None
    if new is None:
        return value
    if (field, value) not in _told:
        _told.add((field, value))
        print(
            f"note: {field} {value!r} is now spelled {new!r}; the old spelling is read as the new one",
            file=sys.stderr,
        )
    return new


def modernize(settings: dict) -> dict:
    """A settings dict (a record's config, a grid cell) with renamed values in their current spelling."""
    return {k: modern(k, v) for k, v in settings.items()}

"""Numbers from clients and operators, parsed strictly: ASCII digits only, of bounded length.

`str.isdigit()` is true for '²' and other Unicode digits that `int()` refuses (or, for Arabic-Indic
digits, reads), so a check with it let such input through to an `int()` that raised deep inside a
call (issue 26: `page_token="²"` answered INTERNAL). Callers turn None into their own refusal.
"""

from __future__ import annotations

import re

from dermserve.core.defaults import MAX_NUMBER_DIGITS

ASCII_DIGITS = re.compile(r"[0-9]+")


def ascii_natural(text: str, max_digits: int = MAX_NUMBER_DIGITS) -> int | None:
    """`text` as an integer >= 0 when it is 1 to `max_digits` ASCII digits, else None."""
    if len(text) > max_digits or not ASCII_DIGITS.fullmatch(text):
        return None
    return int(text)

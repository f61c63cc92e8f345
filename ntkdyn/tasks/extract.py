"""Reading answers out of what instruct models write.

Instruct models rarely answer with the bare value: they write "47 + 38 = 85.", "The answer is **85**.", "$\\boxed{85}$"
or a paragraph that ends with the value. The readers here tolerate all of these and never raise on any text:

* :func:`answer_region` -- where the answer is: the content of the last ``\\boxed{...}`` if there is one, else the
  text after the last "answer is" / "answer:" if there is one, else the last markdown-bold span holding a digit,
  else the whole text;
* :func:`final_number` -- the last integer of the answer region ("1,234" and "85.0" read as 1234 and 85; "85.5" is
  not an integer and reads as None);
* :func:`stated_pair` -- the last stated ``a + b`` (or "a plus b", or else "a and b" / "a, b") of the region;
* :func:`integers` -- every integer of the region, in order.
"""
from __future__ import annotations

import re

__all__ = ["answer_region", "final_number", "stated_pair", "integers", "MAX_TEXT_CHARS"]

MAX_TEXT_CHARS = 4000  # longer completions are read from their last MAX_TEXT_CHARS characters
_MAX_DIGITS = 18  # longer digit runs are not numbers an answer means (and stay clear of int() limits)

_INT = r"(?<![\w.])(-?\d{1,3}(?:,\d{3})+|-?\d+)(\.\d+)?(?![\w])"
_INT_RE = re.compile(_INT)
_ANSWER_RE = re.compile(r"answer\s*(?:is|:|=|would be|will be)\s*:?", re.IGNORECASE)
_BOLD_RE = re.compile(r"\*\*(.+?)\*\*|__(.+?)__", re.DOTALL)
_PLUS_RE = re.compile(r"(?<![\w.])(\d{1,18})\s*(?:\+|plus)\s*(\d{1,18})(?![\w.]\d)", re.IGNORECASE)
_AND_RE = re.compile(r"(?<![\w.])(\d{1,18})(?:,?\s+and\s+|\s*&\s*|,\s+)(\d{1,18})(?![\w.]\d)", re.IGNORECASE)
_OPERATOR_RE = re.compile(r"\s*(?:[-+*/×x÷=]|plus|minus|times)", re.IGNORECASE)
_MARKUP_RE = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$|`|\\text\{|\\mathbf\{")


def _boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return text[i:]


def _region(text, bold: bool = True) -> tuple[str, str]:
    """(kind, region): kind is "boxed", "stated", "bold" or "text" (see the module docstring); ``bold=False``
    skips the bold rule (lists whose items are each in bold)."""
    if not isinstance(text, str):
        return "text", ""
    text = text[-MAX_TEXT_CHARS:]
    boxed = _boxed(text)
    if boxed is not None:
        return "boxed", _MARKUP_RE.sub(" ", boxed)
    stated = list(_ANSWER_RE.finditer(text))
    if stated:
        tail = text[stated[-1].end():]
        if _INT_RE.search(tail.replace("**", " ")):
            return "stated", _MARKUP_RE.sub(" ", tail.replace("**", " "))
    spans = [m.group(1) or m.group(2) for m in _BOLD_RE.finditer(text)] if bold else []
    spans = [b for b in spans if _is_value(b)]
    if spans:
        return "bold", _MARKUP_RE.sub(" ", spans[-1])
    return "text", _MARKUP_RE.sub(" ", text.replace("**", " "))


def _is_value(span: str) -> bool:
    """A bold span that states a value (a number, maybe with words), not an expression like "47 + 38"."""
    return _INT_RE.search(span) is not None and _OPERATOR_RE.search(_INT_RE.sub(" ", span)) is None


def answer_region(text, bold: bool = True) -> str:
    """The part of ``text`` that states the answer (see the module docstring); ``""`` for a non-string."""
    return _region(text, bold)[1]


def _value(m: re.Match) -> int | None:
    digits, frac = m.group(1).replace(",", ""), m.group(2)
    if len(digits.lstrip("-")) > _MAX_DIGITS:
        return None
    if frac and frac.strip(".0"):
        return None
    return int(digits)


def integers(text, bold: bool = True) -> list[int]:
    """Every integer stated in the answer region of ``text``, in order (non-integers skipped)."""
    out = []
    for m in _INT_RE.finditer(answer_region(text, bold)):
        v = _value(m)
        if v is not None:
            out.append(v)
    return out


def final_number(text) -> int | None:
    """The integer the answer region of ``text`` ends with, or None (a final number that is not an integer gives
    None). After a stated "answer is", the first number, unless it starts an expression ("answer is 47 + 38 =
    85"), where the number after the "=" is read: "The answer is 85 (47 + 38)" reads 85."""
    kind, region = _region(text)
    matches = list(_INT_RE.finditer(region))
    if not matches:
        return None
    if kind != "stated":
        return _value(matches[-1])
    first = matches[0]
    if not _OPERATOR_RE.match(region, first.end()):
        return _value(first)
    after = [m for m in matches if "=" in region[first.end():m.start()]]
    return _value(after[0] if after else matches[-1])


def stated_pair(text) -> tuple[int, int] | None:
    """The last pair written as ``a + b`` / "a plus b" in the answer region of ``text``, else the last "a and b"
    / "a, b"; None when there is none."""
    region = answer_region(text, bold=False)  # "**20** and **27**": a pair spans several bold spans
    for pattern in (_PLUS_RE, _AND_RE):
        found = list(pattern.finditer(region))
        if found:
            return int(found[-1].group(1)), int(found[-1].group(2))
    return None

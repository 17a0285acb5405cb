"""`Completed.ended_by` is typed (harness.session.base.EndedBy): every way a
command can end that the harness produces or tests is one of its values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import harness
from harness.session.base import ENDINGS, ending

HARNESS = Path(harness.__file__).resolve().parent
# ended_by="x", ended_by == "x", ended_by in ("x", "y"), ended("x", ...)
_USES = re.compile(r"""ended_by\s*(?:=|==|!=)\s*"([\w-]+)"|ended_by in \(([^)]*)\)|\bended\("([\w-]+)\"""")


def _words_used() -> set[str]:
    words: set[str] = set()
    for path in HARNESS.rglob("*.py"):
        for m in _USES.finditer(path.read_text()):
            if m[2] is not None:
                words.update(re.findall(r'"([\w-]+)"', m[2]))
            else:
                words.add(m[1] or m[3])
    return words


def test_every_ending_the_harness_produces_or_tests_is_typed() -> None:
    used = _words_used()
    assert {"timeout", "eof", "kernel-fatal", "connection-lost", "no-channel", "hang"} <= used
    assert used <= set(ENDINGS)


def test_a_transports_word_that_is_no_ending_is_a_harness_bug() -> None:
    assert ending("timeout") == "timeout"
    with pytest.raises(ValueError, match="not a way a command ends: 'abort'"):
        ending("abort")

"""strata/logs.py: one line per event, whatever the values hold."""

from __future__ import annotations

import pytest

from strata.logs import format_event


@pytest.mark.parametrize(
    "value, written",
    [
        ("plain", "plain"),
        ("two words", '"two words"'),
        ("nul\x00esc\x1b[2Jbell\x07", '"nul\\x00esc\\x1b[2Jbell\\x07"'),
        ("cr\rlf\ntab\t", '"cr\\rlf\\ntab\\t"'),
        ("del\x7fc1\x85", '"del\\x7fc1\\x85"'),
        ("ls\u2028ps\u2029", '"ls\\u2028ps\\u2029"'),
        ('fake" level=error x="', '"fake\\" level=error x=\\""'),
        ("é-ok", "é-ok"),
    ],
)
def test_values_are_escaped_so_a_line_stays_one_event(value: str, written: str) -> None:
    line = format_event("info", "pageserver", "rpc_failed", {"tenant": value, "code": "NOT_FOUND"})
    assert f" tenant={written} code=NOT_FOUND" in line
    assert len(line.splitlines()) == 1
    assert all(c.isprintable() or c == " " for c in line), repr(line)

"""t.js must parse in every browser the README supports, not only in the Chromium the tests drive."""

from __future__ import annotations

import re
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "static" / "t.js"


def test_the_script_uses_no_regex_lookbehind() -> None:
    """A regex lookbehind is a syntax error in Safari before 16.4: the whole script would not run there."""
    code = re.sub(r"//[^\n]*|/\*.*?\*/", "", SCRIPT.read_text(), flags=re.S)
    assert "(?<=" not in code and "(?<!" not in code

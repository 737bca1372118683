"""Rewrite the README's configuration table from the declarations in oxidicom_py/settings.py.

.venv/bin/python scripts/readme_settings.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from oxidicom_py.settings import readme_table  # noqa: E402

START, END = "<!-- settings:", "<!-- end settings -->"


def main() -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    head = text.index("\n", text.index(START)) + 1
    readme.write_text(text[:head] + readme_table() + text[text.index(END) :])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A module whose import takes long: a template still importing (tests/federation/test_warm.py)."""

from __future__ import annotations

import time

time.sleep(600)

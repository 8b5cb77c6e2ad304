"""Another process holding the session store's write lock, as a backup tool or a shell would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
conn.execute("ROLLBACK")
"""


class StoreLock:
    """``with StoreLock(path):`` another process holds an exclusive lock on the SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "StoreLock":
        self._process = subprocess.Popen([sys.executable, "-c", HOLDER, str(self.path)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
        line = self._process.stdout.readline()
        assert line.strip() == "locked", f"the lock holder did not start: {line!r}"
        return self

    def release(self) -> None:
        if self._process is not None:
            self._process.stdin.close()
            self._process.wait(10)
            self._process = None

    def __exit__(self, *exc: object) -> None:
        self.release()

"""An exclusive claim on a folder one process writes into: a run folder, a folder of generated images.

The lock file holds the writer's pid and host; a second writer is refused at once with the holder named,
and a lock left by a dead process on this host is taken over with a note.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from drsf_kit.errors import RunInUseError
from drsf_kit.utils.io import atomic_write_text

LOCK = "lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLock:
    """An exclusive claim on a run folder: ``lock`` holds the writer's pid and host.

    A second writer is refused at once (``RunInUseError`` naming the holder); a lock left by a dead
    process on this host (or an empty one left by a kill during its write) is taken over with a note.
    """

    def __init__(self, run_dir: str | Path, name: str = LOCK):
        self.path = Path(run_dir) / name
        self.held = self.nested = False
        self.me = {"pid": os.getpid(), "host": socket.gethostname()}

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def acquire(self, wait: float = 0.0) -> "RunLock":
        """Take the lock or raise ``RunInUseError``; with ``wait`` > 0, first wait up to that many seconds
        for a live holder to release it (side-by-side workers of one workflow that share a folder)."""
        deadline = time.monotonic() + float(wait)
        while True:
            try:
                return self._acquire()
            except RunInUseError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def _acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({**self.me, "since": round(time.time(), 3)}).encode("utf-8")
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = self._holder()
            if holder and holder.get("host") == self.me["host"] and holder.get("pid") == self.me["pid"]:
                self.held = self.nested = True  # this process already holds it: the outer holder releases
                return self
            stale = holder is None or (holder.get("host") == self.me["host"] and not _pid_alive(int(holder["pid"])))
            if not stale:
                raise RunInUseError(
                    f"{self.path.parent} is in use by pid {holder.get('pid')} on host {holder.get('host')} "
                    f"(lock since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(holder.get('since', 0)))}); "
                    f"wait for it, or delete {self.path} if that process is gone") from None
            who = "an unreadable lock" if holder is None else f"pid {holder.get('pid')} on {holder.get('host')}"
            print(f"note: taking over the stale lock of {self.path.parent} ({who} is no longer running)",
                  file=sys.stderr)
            atomic_write_text(self.path, payload.decode("utf-8"))
            if self._holder() != json.loads(payload):  # another process took it over at the same moment
                raise RunInUseError(f"{self.path.parent} was just taken over by another process") from None
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
        self.held = True
        return self

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if self.held and not self.nested:
            holder = self._holder()
            if holder is None or (holder.get("pid") == self.me["pid"] and holder.get("host") == self.me["host"]):
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

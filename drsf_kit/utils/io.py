"""Atomic writes and JSON-lines helpers.

Every file the kit writes goes through a temporary file in the same folder followed by
``os.replace``, so a killed process never leaves a half-written file under the final name.
JSON-lines files are appended one complete line per ``os.write`` call; readers ignore a
trailing line without a newline (the only damage a kill during an append can do).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from drsf_kit.errors import DataError, DiskFullError


_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _human(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


@contextlib.contextmanager
def disk_space_guard(path: str | os.PathLike, needed: int):
    """Turn "no space left on device" (or a full quota) while writing ``path`` into one ``DiskFullError``
    naming the folder, the bytes the write needed and the bytes free there; other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise

        folder = Path(path).parent
        try:
            free = _human(shutil.disk_usage(folder).free)
        except OSError:
            free = "unknown"
        full = DiskFullError(f"{folder}: no space left on the device while writing {Path(path).name} "
                             f"(needed {_human(needed)}, free {free}); free some space and run the command "
                             f"again (files already written are complete)")
        full.errno = exc.errno
        raise full from None


def _tmp_path(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    fd, tmp = _tmp_path(path)
    try:
        with disk_space_guard(path, len(data)), os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; datasets and runs are shared, so use the usual umask-based mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def atomic_save_image(image, path: str | os.PathLike, **save_kwargs) -> Path:
    """Save a PIL image atomically; the format comes from the suffix of ``path``."""
    path = Path(path)
    buf = io.BytesIO()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported image suffix {path.suffix!r} (use .jpg or .png)")
    image.save(buf, format=fmt, **save_kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (checkpoints)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one JSON object as one line; the line goes out in a single ``os.write``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(row, sort_keys=False, default=str) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        # A previous kill may have left a partial last line: it is dropped, so that a torn line is only
        # ever the last one and a bad line in the middle of a file is real damage (iter_jsonl).
        size = os.fstat(fd).st_size
        if size > 0:
            cut = _complete_length(path, size)
            if cut != size:
                os.ftruncate(fd, cut)
        with disk_space_guard(path, len(line)):
            os.write(fd, line)
            os.fsync(fd)
    finally:
        os.close(fd)


def _complete_length(path: Path, size: int, block: int = 1 << 16) -> int:
    """The length of ``path`` up to and including its last newline (``size`` when it ends with one)."""
    with open(path, "rb") as fh:
        end = size
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            chunk = fh.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return size
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Yield the JSON objects of a JSON-lines file, skipping blank lines and a truncated last line.

    A malformed line that is not the last one raises ``DataError`` naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete = raw.endswith(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            is_last = number == len(lines) and not complete
            if is_last:
                continue  # an append cut short by a kill: ignore it (the next append drops it)
            # appends drop a torn tail before writing, so a bad line followed by others is damage
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
            raise DataError(path, f"line {number} is not valid JSON ({why}); only a torn last line "
                                  f"is skipped, fix or remove this one") from None


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Return all JSON objects of a JSON-lines file (see ``iter_jsonl``)."""
    return list(iter_jsonl(path))


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """Write ``rows`` as a JSON-lines file atomically (replaces the file)."""
    text = "".join(json.dumps(r, default=str) + "\n" for r in rows)
    return atomic_write_text(path, text)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of one file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")


def sha256_tree(*folders: str | os.PathLike, patterns: tuple[str, ...] = WEIGHT_PATTERNS) -> str:
    """One stable SHA-256 over the weight files under ``folders`` (in order): relative names and contents."""
    h = hashlib.sha256()
    for folder in map(Path, folders):
        files = sorted({p for pat in patterns for p in folder.rglob(pat) if p.is_file()})
        for p in files:
            h.update(str(p.relative_to(folder)).encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def _file_token(path: Path) -> str:
    """What identifies one weight file without reading it: the content hash a Hugging Face cache names
    its blob after (snapshot files are links to ``blobs/<sha256>``), else its size and mtime."""
    if path.is_symlink():
        target = os.path.basename(os.readlink(path))
        if len(target) == 64 and all(c in "0123456789abcdef" for c in target):
            return f"sha256:{target}"
    stat = path.stat()
    return f"size:{stat.st_size}:mtime:{stat.st_mtime_ns}"


def fingerprint_tree(*folders: str | os.PathLike, patterns: tuple[str, ...] = WEIGHT_PATTERNS) -> str:
    """SHA-256 identifying the weights under ``folders`` without reading weight bytes.

    Each weight file contributes its relative name and ``_file_token`` (cache content hash, or size and
    mtime); each small ``*.json`` config contributes its contents. Copying a folder elsewhere keeps the
    fingerprint only for cache snapshots; ``sha256_tree`` reads every byte when that matters.
    """
    h = hashlib.sha256()
    for folder in map(Path, folders):
        files = sorted({p for pat in patterns for p in folder.rglob(pat) if p.is_file()})
        for p in files:
            h.update(f"{p.relative_to(folder)}={_file_token(p)};".encode())
        for p in sorted(q for q in folder.rglob("*.json") if q.is_file()):
            h.update(f"{p.relative_to(folder)}={sha256_file(p)};".encode())
    return h.hexdigest()

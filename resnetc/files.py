"""Writing outputs so that nothing is ever half-written.

Every file is first written in full to a temporary file in its target folder; only when all of
them are written are they renamed into place. A failure while writing (a full disk, a read-only
folder) leaves the old files as they were and no temporaries behind; a reader never sees a
partial file, since a rename within a folder is atomic.

A generated module also gets its bytecode cache refreshed by content hash, because Python trusts
a `.pyc` whose source has the same size and modification second, and would import the stale module.
"""

from __future__ import annotations

import contextlib
import os
import py_compile
import tempfile
from pathlib import Path


def _temporary_copy(path: Path, data: bytes) -> str:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return temporary


def write_all_atomic(outputs: dict[Path, bytes | bytearray]) -> None:
    """Write every file, or (on an error while writing) none of them."""
    pending: list[tuple[str, Path]] = []  # temporaries not yet renamed into place
    try:
        for path, data in outputs.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            pending.append((_temporary_copy(path, data), path))
        for temporary, path in list(pending):
            os.replace(temporary, path)
            pending.remove((temporary, path))
    finally:
        for temporary, _ in pending:  # only after a failure
            with contextlib.suppress(OSError):
                os.unlink(temporary)


def refresh_bytecode(path: Path) -> None:
    """Recompile `path`'s cached bytecode, checked by hash, so the next import sees the new source."""
    with contextlib.suppress(OSError, py_compile.PyCompileError):
        py_compile.compile(str(path), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)

"""Writing outputs so that nothing is ever half-written.

Each file is written to a temporary file in its target folder and renamed into place: a
reader sees the old file or the new one, never a mixture. A generated module also gets its
bytecode cache refreshed by content hash, because Python trusts a `.pyc` whose source has
the same size and modification second, and would import the stale module.
"""

from __future__ import annotations

import contextlib
import os
import py_compile
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def refresh_bytecode(path: Path) -> None:
    """Recompile `path`'s cached bytecode, checked by hash, so the next import sees the new source."""
    with contextlib.suppress(OSError, py_compile.PyCompileError):
        py_compile.compile(str(path), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)

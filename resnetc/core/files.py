"""Writing outputs so that nothing is ever half-written, and a set of outputs is all or nothing.

`write_all_atomic` writes every file in full to a temporary beside it, then renames them into place.
- Every target is checked before anything is written (a directory where a file should go is refused,
  naming the target, not a temporary).
- The renames are one step: when a later rename fails, the files already renamed are put back as they
  were (the previous file restored from a hard link, or removed where there was none), so a `.py` is
  never left beside an `.onnx` from another compile. SIGINT and SIGTERM are held while renaming and
  delivered after it, so a signal never splits a pair (the CLI turns SIGTERM into an exception, so
  that a signal while the temporaries are written removes them).
- Writers into one folder take turns: an exclusive flock on the folder itself (no lock file is left
  among the outputs; released when the process ends, however it ends), so two concurrent compiles give
  one's complete result.
- A process killed outright (SIGKILL, power loss) can leave temporaries: holding the lock, a writer
  removes those of its own targets' naming (`.<name>.<random>.tmp`) before it writes.

A generated module also gets its bytecode cache refreshed by content hash, because Python trusts a
`.pyc` whose source has the same size and modification second, and would import the stale module.
"""

from __future__ import annotations

import contextlib
import os
import py_compile
import re
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from resnetc.core.errors import UsageError

try:
    import fcntl
except ImportError:  # not POSIX: writers are not serialised, each write is still atomic
    fcntl = None  # type: ignore[assignment]

_HELD = (signal.SIGINT, signal.SIGTERM)
CHUNK = 1 << 20
# A file's content: its bytes, or pieces whose concatenation is the file (a model written straight from its
# weights' memory, never joined into one copy).
Content = bytes | bytearray | list[bytes | memoryview]


def _pieces(data: Content) -> list[bytes | bytearray | memoryview]:
    return data if isinstance(data, list) else [data]


def _mode() -> int:
    """Read-write for the owner, and for others what the umask allows (as `open` would create it)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _new_temporary(path: Path) -> tuple[int, str]:
    """A new, open temporary beside `path`, named `.<name>.<random>.tmp` (what stale-temporary removal matches)."""
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def _temporary_copy(path: Path, data: Content) -> str:
    """`data` in a temporary beside `path`; an error names `path`, the file the user asked for."""
    temporary = None
    try:
        handle, temporary = _new_temporary(path)
        with os.fdopen(handle, "wb") as stream:
            for piece in _pieces(data):
                stream.write(piece)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, _mode())
    except BaseException as error:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        if isinstance(error, OSError) and error.errno is not None:
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    return temporary


def _check_target(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode) and not stat.S_ISLNK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise UsageError(f"{path} is {kind}: it cannot be replaced by an output, so nothing was written")


@contextlib.contextmanager
def _locked(folders: list[Path]) -> Iterator[None]:
    """Exclusive locks on every folder, taken in one order (no two writers wait on each other)."""
    handles = []
    try:
        for folder in sorted(set(folders)):
            if fcntl is None:
                break
            handle = os.open(folder, os.O_RDONLY)  # a folder can be flocked like a file
            handles.append(handle)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        for handle in handles:
            os.close(handle)  # closing releases the lock


def _remove_stale_temporaries(path: Path) -> None:
    """Temporaries of `path`'s naming left by a writer that was killed (the lock says none is writing)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp$")
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            if pattern.match(entry.name) and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends, then arrive as usual: the renames are one step.

    Python runs signal handlers in the main thread whichever thread the operating system chose, so
    recording the signal in a handler (and raising it again afterwards) holds it; blocking it with
    pthread_sigmask would not, since torch's and onnxruntime's threads would still receive it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {number: signal.signal(number, lambda number, _frame: received.append(number)) for number in _HELD}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received:
            signal.raise_signal(received[0])  # to the handler that was in place: KeyboardInterrupt for SIGINT


def _backup(path: Path) -> str | None:
    """A second name for the current file (a hard link: no copy), to restore it; None where there is none."""
    if not path.is_file():
        return None
    handle, backup = _new_temporary(path)
    os.close(handle)
    os.unlink(backup)  # the name only: os.link makes the file
    try:
        os.link(path, backup)
    except OSError:  # a filesystem without hard links
        shutil.copy2(path, backup)
    return backup


def _commit(pending: list[tuple[str, Path]]) -> None:
    """Rename every temporary into place, or (on any failure) leave every target as it was."""
    backups: dict[Path, str | None] = {}
    renamed: list[Path] = []
    try:
        for temporary, path in pending:
            backups[path] = _backup(path)
            os.replace(temporary, path)
            renamed.append(path)
    except BaseException:
        for path in reversed(renamed):
            previous = backups.pop(path)
            with contextlib.suppress(OSError):
                if previous is None:
                    os.unlink(path)
                else:
                    os.replace(previous, path)
        raise
    finally:
        for backup in backups.values():
            if backup is not None:
                with contextlib.suppress(OSError):
                    os.unlink(backup)


def write_all_atomic(outputs: dict[Path, Content]) -> None:
    """Write every file, or (on an error, a signal or a refused target) none of them."""
    for path in outputs:
        _check_target(path)
    created: list[Path] = []  # folders this call made, removed again if it fails (a full disk, a signal)
    try:
        _write_all(outputs, created)
    except BaseException:
        for folder in reversed(created):
            with contextlib.suppress(OSError):  # only if still empty: another writer may have used it
                folder.rmdir()
        raise


def _made_folders(folder: Path) -> list[Path]:
    """The folders `mkdir(parents=True)` is about to create for `folder`, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


def _write_all(outputs: dict[Path, Content], created: list[Path]) -> None:
    folders = []
    for path in outputs:
        made = _made_folders(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        created.extend(made)
        folders.append(path.parent)
    with _locked(folders):
        pending: list[tuple[str, Path]] = []  # temporaries not yet renamed into place
        try:
            for path in outputs:
                _check_target(path)  # again, under the lock: another process may have changed it
                _remove_stale_temporaries(path)
            for path, data in outputs.items():
                pending.append((_temporary_copy(path, data), path))
            with _signals_held():
                _commit(pending)
            pending.clear()
        finally:
            for temporary, _ in pending:  # only after a failure
                with contextlib.suppress(OSError):
                    os.unlink(temporary)


def same_content(path: Path, data: Content) -> bool:
    """Whether the file holds exactly `data`: sizes first, then chunk by chunk (a 6 GB file is never read whole)."""
    pieces = _pieces(data)
    try:
        if not path.is_file() or path.stat().st_size != sum(len(piece) for piece in pieces):
            return False
        with path.open("rb") as stream:
            for piece in pieces:
                view = memoryview(piece).cast("B")
                for start in range(0, len(view), CHUNK):
                    end = min(start + CHUNK, len(view))
                    if stream.read(end - start) != view[start:end]:
                        return False
        return True
    except OSError:
        return False


def refresh_bytecode(path: Path) -> None:
    """Recompile `path`'s cached bytecode, checked by hash, so the next import sees the new source."""
    with contextlib.suppress(OSError, py_compile.PyCompileError):
        py_compile.compile(str(path), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)

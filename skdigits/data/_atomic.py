"""Atomic file replacement, shared by every writer in skdigits."""

import os
import secrets
import stat
from contextlib import contextmanager

__all__ = ["atomic_write"]

_WRITE_MODE_CHARS = frozenset("wbt+")


def _check_mode(mode):
    if not isinstance(mode, str) or "w" not in mode or not set(mode) <= _WRITE_MODE_CHARS:
        raise ValueError(
            f"atomic_write only supports write modes such as 'w' or 'wb', got mode={mode!r}"
        )


def _create_temp_file(directory, basename):
    # O_EXCL guarantees the name is ours; 0o666 lets the process umask decide the
    # final permissions, as a plain open() would (mkstemp would force 0o600).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{basename}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {basename!r}")


def _fsync_directory(directory):
    # Makes the rename itself durable on POSIX; Windows cannot open directories.
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path, mode="w", **open_kwargs):
    """Open a file for writing so that it appears at `path` all at once or not at all.

    The data go to a temporary file in the same directory (so the final rename
    stays on one file system); when the ``with`` block ends without an
    exception the file is flushed to disk and moved onto `path` with
    :func:`os.replace`. On any exception the temporary file is removed and
    `path` is left exactly as it was, so readers never see half a file.

    Parameters
    ----------
    path : str or path-like
        Destination file. Its directory must exist.
    mode : str, default="w"
        A write mode for :func:`open`: ``"w"``, ``"wt"``, ``"wb"`` (``"+"`` allowed).
    **open_kwargs
        Passed to :func:`open`, e.g. ``encoding="utf-8"`` or ``newline=""``.

    Yields
    ------
    file object
        The open temporary file.

    Raises
    ------
    ValueError
        If `mode` is not a write mode.

    Notes
    -----
    If `path` already exists its permission bits are kept. If `path` is a
    symbolic link, the link itself is replaced by a regular file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from skdigits.data import atomic_write
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
    >>> with atomic_write(target, encoding="utf-8") as f:
    ...     _ = f.write("hello")
    >>> target.read_text(encoding="utf-8")
    'hello'
    """
    _check_mode(mode)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = _create_temp_file(directory, os.path.basename(path))
    try:
        try:
            f = os.fdopen(fd, mode, **open_kwargs)
        except BaseException:
            os.close(fd)
            raise
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        except FileNotFoundError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)

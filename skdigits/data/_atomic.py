"""Atomic file replacement, shared by every writer in skdigits.

A writer puts its data in ``.NAME.<12 hex digits>.tmp`` beside the target
``NAME`` and renames it into place.  A writer killed before the rename
(``kill -9``, a power cut) leaves that file behind; the next write to the
same target removes such leftovers, and only them: files named exactly so,
untouched for :data:`STALE_TEMP_SECONDS`, and not locked.  Every writer holds
an exclusive ``flock`` on its temporary file until the rename, and the
operating system drops the lock when the writer dies, so a concurrent save
of the same target never loses its file.
"""

import errno
import os
import secrets
import stat
import time
from contextlib import contextmanager

try:
    import fcntl
except ImportError:  # Windows: no flock, but a file open there cannot be deleted either
    fcntl = None

__all__ = ["atomic_write", "check_target"]

_WRITE_MODE_CHARS = frozenset("wbt+")
#: Random hex digits in a temporary file's name: 48 bits, never guessed twice.
_TEMP_HEX_DIGITS = 12
_HEX_DIGITS = frozenset("0123456789abcdef")
#: A temporary file of ours untouched for this long, and unlocked, is stale.
#: The lock is what protects a live writer; the age covers the instant between
#: creating a file and locking it, and file systems that refuse locks.  A
#: minute is ample for that, and short enough that repeated kills do not pile
#: up copies of a large model.
STALE_TEMP_SECONDS = 60


def _check_mode(mode):
    if not isinstance(mode, str) or "w" not in mode or not set(mode) <= _WRITE_MODE_CHARS:
        raise ValueError(
            f"atomic_write only supports write modes such as 'w' or 'wb', got mode={mode!r}"
        )


def check_target(path):
    """Return `path` (a str) if a file can be written there; else raise, naming it.

    Catches, before any data are produced, what would otherwise fail only at
    the end of a write.

    Raises
    ------
    ValueError
        If `path` is empty.
    IsADirectoryError
        If `path` is a folder (or ends in a path separator).
    FileNotFoundError, NotADirectoryError
        If the folder that should hold `path` does not exist or is a file.
    """
    path = os.fsdecode(os.fspath(path))
    if not path:
        raise ValueError("cannot write to an empty path; give a file name")
    if os.path.isdir(path) or not os.path.basename(path):
        raise IsADirectoryError(errno.EISDIR, "Is a folder; give a file name", path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise NotADirectoryError(errno.ENOTDIR, f"{directory} is not a folder", path)
        raise FileNotFoundError(errno.ENOENT, f"No folder {directory}", path)
    return path


def _is_temp_name(entry_name, name):
    """Whether `entry_name` is exactly what _create_temp_file names a file for `name`."""
    prefix, suffix = f".{name}.", ".tmp"
    token = entry_name[len(prefix):-len(suffix)]
    return (entry_name.startswith(prefix) and entry_name.endswith(suffix)
            and len(entry_name) == len(prefix) + _TEMP_HEX_DIGITS + len(suffix)
            and set(token) <= _HEX_DIGITS)


def _create_temp_file(directory, name):
    # O_EXCL guarantees the name is ours; 0o666 lets the process umask decide the
    # final permissions, as a plain open() would (mkstemp would force 0o600).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(_TEMP_HEX_DIGITS // 2)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {name!r}")


def _hold_lock(fd):
    """A duplicate of `fd` holding an exclusive lock on its file, or None.

    A flock belongs to the open file, not the descriptor: the duplicate keeps
    the file locked after the writer's own descriptor closes, up to the
    rename.  The lock tells other writers' clean-up the file is in use.
    """
    if fcntl is None:
        return None
    lock = os.dup(fd)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: the age rule alone applies
        os.close(lock)
        return None
    return lock


def _remove_if_unlocked(path, seen):
    """Delete `path` if no live writer locks it and it is still the file `seen`."""
    if fcntl is None:
        os.unlink(path)  # Windows refuses to delete a file a writer has open
        return
    # O_NONBLOCK: should the name have become a FIFO meanwhile, do not wait on it.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # locked: a writer is alive
        same = {(info.st_dev, info.st_ino) for info in (seen, os.fstat(fd), os.lstat(path))}
        if len(same) == 1:  # the name still holds the file examined and locked
            os.unlink(path)
    finally:
        os.close(fd)


def _remove_stale_temp_files(directory, name):
    """Delete the temporary files that killed writers of `name` left in `directory`.

    Best effort: a file that cannot be examined or removed is left alone.
    """
    try:
        entries = [entry for entry in os.scandir(directory) if _is_temp_name(entry.name, name)]
    except OSError:
        return
    now = time.time()
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and now - info.st_mtime >= STALE_TEMP_SECONDS:
                _remove_if_unlocked(entry.path, info)
        except OSError:
            continue


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


def _about_target(exc, path):
    """`exc` told about `path` when it names one of our temporary files or no
    file: the temporary name means nothing to the caller, the target does."""
    filename = exc.filename
    if filename is not None and not (
            isinstance(filename, (str, bytes))
            and _is_temp_name(os.path.basename(os.fsdecode(filename)), os.path.basename(path))):
        return exc
    try:
        if exc.errno is None:
            return type(exc)(f"{path}: {exc}")
        return type(exc)(exc.errno, exc.strerror, path)
    except TypeError:  # an OSError subclass with a constructor of its own
        return exc


@contextmanager
def atomic_write(path, mode="w", **open_kwargs):
    """Open a file for writing so that it appears at `path` all at once or not at all.

    The data go to a temporary file in the same directory (so the final rename
    stays on one file system); when the ``with`` block ends without an
    exception the file is flushed to disk and moved onto `path` with
    :func:`os.replace`. On any exception the temporary file is removed and
    `path` is left exactly as it was, so readers never see half a file.
    Temporary files that killed writers left beside `path` are removed first.

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
        If `mode` is not a write mode, or `path` is empty.
    IsADirectoryError, FileNotFoundError, NotADirectoryError
        If `path` is a folder or its folder does not exist (before the
        ``with`` block runs).
    OSError
        If writing fails (a full disk, say); it names `path`, not the
        temporary file.

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
    path = check_target(path)
    directory, name = os.path.split(os.path.abspath(path))
    _remove_stale_temp_files(directory, name)
    tmp, lock = None, None
    try:
        fd, tmp = _create_temp_file(directory, name)
        lock = _hold_lock(fd)
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
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        renamed = _about_target(exc, path) if isinstance(exc, OSError) else exc
        if renamed is exc:
            raise
        raise renamed from None
    finally:
        if lock is not None:
            os.close(lock)
    _fsync_directory(directory)

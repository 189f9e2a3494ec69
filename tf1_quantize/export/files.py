"""Writing output files atomically, never over an input.

A file is written to a temporary name beside its destination, then renamed
over it. The temporary name holds the writer's process id and a random
part, `.<name>.<pid>.<random>.tmp`, so that concurrent writers never share
one, and a later write removes what a killed writer left for the same
destination.
"""

import errno
import os
import re
import tempfile
from typing import Iterable

# Keeps temporary names within the file system's name limit (255 bytes).
_NAME_PART = 64


def _file_mode(path: str) -> int:
    """The existing file's mode, else what `open()` would give a new file."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _temp_prefix(target: str) -> str:
    return '.' + os.path.basename(target)[:_NAME_PART] + '.'


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output_path(path: str, protected_paths: Iterable[str] = ()) -> str:
    """Checks, before any work, that `path` can be an output file.

    Args:
        path: the file to write.
        protected_paths: input files that `path` must not be.

    Returns:
        The absolute path.

    Raises:
        ValueError: if `path` is one of `protected_paths`.
        OSError: `path` is a directory or too long for the file system.
    """
    target = os.path.realpath(path)
    for protected in protected_paths:
        if os.path.realpath(protected) == target:
            raise ValueError(f'Refusing to overwrite input file {protected}')
    if os.path.isdir(target):
        raise IsADirectoryError(errno.EISDIR, 'is a directory', target)
    existing = os.path.dirname(target)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    name_max = os.pathconf(existing, 'PC_NAME_MAX')
    path_max = os.pathconf(existing, 'PC_PATH_MAX')
    longest = max(len(os.fsencode(part)) for part in target.split(os.sep))
    if longest > name_max or len(os.fsencode(target)) >= path_max:
        raise OSError(
            errno.ENAMETOOLONG,
            f'path too long for the file system (at most {name_max} bytes '
            f'per name, {path_max - 1} in all)', target)
    return target


def _remove_stale_temporaries(target: str) -> None:
    """Removes temporary files that dead writers left for `target`.

    Args:
        target: the destination path.
    """
    directory = os.path.dirname(target)
    pattern = re.compile(re.escape(_temp_prefix(target)) +
                         r'(\d+)\.[A-Za-z0-9_]+\.tmp')
    for name in os.listdir(directory):
        match = pattern.fullmatch(name)
        if match and not _is_running(int(match.group(1))):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass  # Another writer removed it first.


def write_atomic(path: str, data: bytes,
                 protected_paths: Iterable[str] = ()) -> str:
    """Writes bytes to `path` atomically (temp file in its dir, os.replace).

    A new file gets the usual permissions (0o666 minus the umask), a
    replaced one keeps its own. Temporary files that killed writers left
    for the same destination are removed.

    Args:
        path: destination file; missing directories are created.
        data: the bytes.
        protected_paths: input files that must never be overwritten.

    Returns:
        The absolute destination path.

    Raises:
        ValueError: if `path` is one of `protected_paths`.
        OSError: the file cannot be written; the message names `path`.
    """
    target = check_output_path(path, protected_paths)
    try:
        _write(target, data)
    except OSError as e:
        raise OSError(e.errno, f'cannot write {path}: {e.strerror or e}'
                      ) from e
    return target


def _write(target: str, data: bytes) -> None:
    directory = os.path.dirname(target)
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temporaries(target)
    mode = _file_mode(target)
    fd, tmp = tempfile.mkstemp(
        prefix=f'{_temp_prefix(target)}{os.getpid()}.', suffix='.tmp',
        dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

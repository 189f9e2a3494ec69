"""Output files of the export: atomic, never over an input, no leftovers."""

import errno
import os
import subprocess
import sys

import pytest

from tf1_quantize import export


def _dead_pid():
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, '-c', 'pass'])
    process.wait()
    return process.pid


def test_write_atomic_replaces_without_leftovers(tmp_path):
    path = tmp_path / 'sub' / 'model.tflite'
    assert export.write_atomic(str(path), b'first') == os.path.realpath(path)
    export.write_atomic(str(path), b'second')
    assert path.read_bytes() == b'second'
    assert os.listdir(path.parent) == ['model.tflite']


def test_write_atomic_file_modes(tmp_path):
    umask = os.umask(0o022)
    try:
        new = tmp_path / 'new.tflite'
        export.write_atomic(str(new), b'x')
        assert new.stat().st_mode & 0o777 == 0o644
        kept = tmp_path / 'kept.tflite'
        kept.write_bytes(b'old')
        kept.chmod(0o600)
        export.write_atomic(str(kept), b'new')
        assert kept.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)


def test_write_atomic_refuses_to_overwrite_an_input(tmp_path):
    source = tmp_path / 'frozen.pb'
    source.write_bytes(b'graph')
    alias = os.path.join(str(tmp_path), '.', 'frozen.pb')
    with pytest.raises(ValueError, match='overwrite input'):
        export.write_atomic(alias, b'model', protected_paths=[str(source)])
    assert source.read_bytes() == b'graph'


def test_write_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / 'model.tflite'
    export.write_atomic(str(path), b'old')

    def failing_replace(src, dst):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(os, 'replace', failing_replace)
    with pytest.raises(OSError, match='cannot write .*model.tflite: No space'):
        export.write_atomic(str(path), b'new')
    assert path.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['model.tflite']


def test_temporary_name_holds_the_process_id(tmp_path, monkeypatch):
    seen = []

    def recording_replace(src, dst):
        seen.append(os.path.basename(src))
        os.rename(src, dst)

    monkeypatch.setattr(os, 'replace', recording_replace)
    export.write_atomic(str(tmp_path / 'model.tflite'), b'x')
    export.write_atomic(str(tmp_path / 'model.tflite'), b'y')
    prefix = f'.model.tflite.{os.getpid()}.'
    assert all(n.startswith(prefix) and n.endswith('.tmp') for n in seen)
    assert seen[0] != seen[1]


def test_leftovers_of_killed_writers_are_removed(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f'.model.tflite.{dead}.abc_123.tmp'
    other_destination = tmp_path / f'.other.tflite.{dead}.abc_123.tmp'
    running = tmp_path / f'.model.tflite.{os.getppid()}.xyz.tmp'
    for path in (stale, other_destination, running):
        path.write_bytes(b'partial')
    export.write_atomic(str(tmp_path / 'model.tflite'), b'model')
    # The dead writer's file goes; another destination's, or a running
    # writer's, stays.
    assert sorted(os.listdir(tmp_path)) == sorted(
        ['model.tflite', other_destination.name, running.name])


def test_long_file_name_gets_a_short_temporary_name(tmp_path):
    path = tmp_path / ('m' * 240 + '.tflite')
    export.write_atomic(str(path), b'model')
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize('name', ['m' * 300, 'd/' * 2100 + 'm'],
                         ids=['name', 'path'])
def test_too_long_path_is_refused_before_writing(tmp_path, name):
    with pytest.raises(OSError, match='too long') as caught:
        export.write_atomic(str(tmp_path / name), b'model')
    assert caught.value.errno == errno.ENAMETOOLONG
    assert not os.listdir(tmp_path)


def test_directory_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match='is a directory'):
        export.check_output_path(str(tmp_path))

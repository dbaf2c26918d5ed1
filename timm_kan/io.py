"""Output helpers shared by the commands: markdown tables, atomic JSON files and folders, class maps, and the
rules that keep a user's files safe (a command writes only into a new folder or one it made, replaces only its own
files, and one run at a time owns a folder)."""
import contextlib
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, Optional, Sequence, Union

import torch

__all__ = ['markdown_table', 'write_atomic', 'write_json_atomic', 'write_class_map', 'atomic_dir', 'processor_name',
           'DataError', 'OutputError', 'check_placement', 'check_output_dir', 'mark_output_dir', 'output_lock',
           'OUTPUT_MARKER', 'EXPORT_MARKER_KEY', 'LOCK_FILE', 'progress_line']

_logger = logging.getLogger(__name__)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; cells are written with ``str``."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Union[str, Path], write: Callable[[IO], None], binary: bool = False) -> None:
    """``write(file)`` into a uniquely named temporary file beside ``path``, then a rename: readers never see half a
    file, and two writers never share a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb' if binary else 'w', **({} if binary else {'newline': ''})) as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the file it becomes is an ordinary one
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Union[str, Path], data: Any) -> None:
    """Write JSON atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda f: json.dump(data, f, indent=2))


def write_class_map(folder: Union[str, Path], classes: Sequence[str]) -> Path:
    """``class_indices.json`` ({"0": name, ...}, the reference write-ups' format) in ``folder``."""
    path = Path(folder) / 'class_indices.json'
    write_json_atomic(path, {str(i): c for i, c in enumerate(classes)})
    return path


class DataError(ValueError):
    """A data set that cannot be used, naming the path and what is wrong with it."""


class OutputError(ValueError):
    """An output folder a command may not write into, naming the folder, the option and why."""


# the record, inside a folder a command made, that the folder is that command's own (splits carry split.json);
# an export folder is exactly what the Hub receives, so its record is a key of its config.json instead; a compare
# run of an earlier version is known by its results.json
OUTPUT_MARKER = '.timm_kan.json'
EXPORT_MARKER_KEY = 'timm_kan_version'
LOCK_FILE = '.timm_kan.lock'


def _marker_kind(folder: Path) -> Optional[str]:
    for name, kind_of in ((OUTPUT_MARKER, lambda d: d.get('kind')),
                          ('config.json', lambda d: 'export' if EXPORT_MARKER_KEY in d else None),
                          ('results.json', lambda d: 'compare' if {'config', 'results'} <= set(d) else None)):
        try:
            kind = kind_of(json.loads((folder / name).read_text()))
        except (OSError, ValueError, AttributeError, TypeError):
            continue
        if kind:
            return kind
    return None


def check_placement(target: Union[str, Path], option: str, inputs: Sequence[Union[str, Path]] = ()) -> Path:
    """Raise :class:`OutputError` when the output folder ``target`` is the current folder or one above it, an input,
    inside an input or holding one; writes nothing."""
    target = Path(target).expanduser()
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f'{option} {target}: that is the current folder or a folder above it; give a folder of '
                          'its own')
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if resolved == source or source in resolved.parents:
            raise OutputError(f'{option} {target} lies inside the input {given}: choose a folder outside it')
        if resolved in source.parents:
            raise OutputError(f'{option} {target} holds the input {given}: choose a folder of its own')
    return target


def check_output_dir(target: Union[str, Path], kind: str, option: str, inputs: Sequence[Union[str, Path]] = (),
                     overwrite: bool = False) -> Path:
    """Raise :class:`OutputError` unless ``kind``'s command may write into the folder ``target``; writes nothing.

    Refused always: what :func:`check_placement` refuses, an existing file. Refused unless ``overwrite``: an
    existing, non-empty folder the command did not make (no :data:`OUTPUT_MARKER` of ``kind``). With ``overwrite``
    the command still replaces only the files it writes.
    """
    target = check_placement(target, option, inputs)
    if target.exists() and not target.is_dir():
        raise OutputError(f'{option} {target} is an existing file, not a folder')
    # a folder holding only a lock is being started by another run: output_lock names it
    if target.is_dir() and any(p.name != LOCK_FILE for p in target.iterdir()) and _marker_kind(target) != kind \
            and not overwrite:
        raise OutputError(f'{option} {target} exists and was not made by timm-kan {kind} (no {OUTPUT_MARKER}): '
                          'choose a new folder, or pass --overwrite to write into it (only the files the command '
                          'writes are replaced)')
    return target


def mark_output_dir(folder: Union[str, Path], kind: str) -> None:
    """Record that ``folder`` is ``kind``'s own output (see :func:`check_output_dir`)."""
    write_json_atomic(Path(folder) / OUTPUT_MARKER, {'kind': kind, 'made_by': 'timm_kan'})


@contextmanager
def atomic_dir(target: Union[str, Path], kind: str, whole: bool = False, mark: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` whose files become ``target``'s when the block completes.

    A new or empty ``target`` is the renamed temporary folder (it appears whole or not at all); into an existing
    one each written file is moved by an atomic rename, and nothing else in it is touched. With ``whole`` an
    existing ``target``, which the caller has checked is wholly its own (a split it made), is swapped out instead.
    The folder is marked as ``kind``'s own. An interrupt or error leaves ``target`` as it was and removes the
    temporary folder. Callers check ``target`` with :func:`check_output_dir` first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f'.{target.name}.', suffix='.tmp'))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the folder it becomes is an ordinary one
    try:
        yield tmp
        if mark:
            mark_output_dir(tmp, kind)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        if whole and target.is_dir():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f'.{target.name}.', suffix='.old'))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)  # the caller's own earlier folder, moved aside just now
            return
        if not target.exists():
            os.replace(tmp, target)
            return
        for path in sorted(tmp.rglob('*'), key=lambda p: len(p.parts)):
            dest = target / path.relative_to(tmp)
            if path.is_dir():
                dest.mkdir(exist_ok=True)
            else:
                os.replace(path, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # only the temporary folder this call made


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_holder(path: Path) -> Optional[Dict[str, Any]]:
    """The lock's content; None for a lock whose holder is gone (dead process, or unreadable and old)."""
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written right now, or left half written by a crash
        return {} if time.time() - path.stat().st_mtime < 10 else None
    if holder.get('host') == socket.gethostname() and not _pid_alive(int(holder.get('pid', -1))):
        return None
    return holder


@contextmanager
def output_lock(folder: Union[str, Path], option: str = '--output') -> Iterator[None]:
    """Own ``folder`` for one run: a lock file holding this process's pid, removed when the block ends.

    A second run into the same folder is an :class:`OutputError` naming the holder; a lock left by a process that
    is no longer running is taken over with a warning.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    mine = {'pid': os.getpid(), 'host': socket.gethostname(), 'command': ' '.join(sys.argv),
            'started': time.strftime('%Y-%m-%d %H:%M:%S')}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is not None:
                who = f'pid {holder["pid"]} on {holder.get("host")}, since {holder.get("started")}: ' \
                      f'{holder.get("command")}' if holder else 'a run that is starting'
                raise OutputError(f'{option} {folder} is in use by another run ({who}); wait for it to end or '
                                  'choose another folder') from None
            _logger.warning(f'{folder}: taking over the lock left by a run that is no longer running ({path})')
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, 'w') as f:
            json.dump(mine, f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text()).get('pid') == mine['pid']:
                path.unlink()


def processor_name() -> str:
    """'<processor model>, N torch threads' (the model from /proc/cpuinfo where Linux has it)."""
    model = 'unknown processor'
    try:
        model = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'{model}, {torch.get_num_threads()} torch threads'


def progress_line(text: str, start: Optional[float] = None) -> None:
    """One plain progress line on stderr, flushed at once (stdout keeps the results users pipe): what a long
    command prints per epoch or measured group, so that a run under nohup or in CI shows it is alive. With
    ``start`` (a ``time.perf_counter()`` value) the line ends in ``(elapsed 41 s)`` / ``12 min 05 s`` /
    ``2 h 03 min``."""
    if start is not None:
        s = max(0, round(time.perf_counter() - start))
        shown = f'{s} s' if s < 60 else f'{s // 60} min {s % 60:02d} s' if s < 3600 else \
            f'{s // 3600} h {s % 3600 // 60:02d} min'
        text = f'{text} (elapsed {shown})'
    print(text, file=sys.stderr, flush=True)

"""Small output helpers shared by the commands: markdown tables, atomic JSON files and folders, class maps."""
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import torch

__all__ = ['markdown_table', 'write_json_atomic', 'write_class_map', 'atomic_dir', 'processor_name']


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; cells are written with ``str``."""
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Union[str, Path], data: Any) -> None:
    """Write JSON through a temporary file in the same folder and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(data, f, indent=2)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a results file is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_class_map(folder: Union[str, Path], classes: Sequence[str]) -> Path:
    """``class_indices.json`` ({"0": name, ...}, the reference write-ups' format) in ``folder``."""
    path = Path(folder) / 'class_indices.json'
    write_json_atomic(path, {str(i): c for i, c in enumerate(classes)})
    return path


@contextmanager
def atomic_dir(target: Union[str, Path], replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target`` that becomes ``target`` only when the block completes.

    An interrupt or error leaves no ``target`` (and removes the temporary folder). With ``replace`` an
    existing ``target`` is swapped out; without it an existing ``target`` is an error.
    """
    target = Path(target)
    if target.exists() and not replace:
        raise FileExistsError(f'{target} exists already')
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f'.{target.name}.', suffix='.tmp'))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the folder it becomes is an ordinary one
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def processor_name() -> str:
    """'<processor model>, N torch threads' (the model from /proc/cpuinfo where Linux has it)."""
    model = 'unknown processor'
    try:
        model = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'{model}, {torch.get_num_threads()} torch threads'

"""Run one of timm's scripts with the KAN-ViT models registered.

timm's ``validate.py``, ``inference.py``, ``benchmark.py`` and ``onnx_export.py`` have no ``--device-modules``
(only ``train.py`` has), so they answer ``Unknown model`` for ``chebykan_vit_t16``. ``timm-kan timm SCRIPT ARGS``
(or ``python -m timm_kan.run_script SCRIPT ARGS``) imports ``timm_kan`` and then runs SCRIPT as ``python SCRIPT
ARGS`` would. The scripts are not in timm's wheel: take them from a checkout of the installed timm version.
"""
import runpy
import sys
from pathlib import Path
from typing import Sequence

__all__ = ['run_script']


def run_script(script: str, args: Sequence[str]) -> int:
    """Run ``script`` as ``__main__`` with ``args`` as its command line; returns its exit status."""
    import timm

    import timm_kan  # noqa: F401  registers the models

    path = Path(script)
    if not path.is_file():
        raise FileNotFoundError(f'timm script not found: {script} (timm ships its scripts outside the wheel: take '
                                f'validate.py, inference.py, ... from a checkout of timm {timm.__version__})')
    argv, sys_path = sys.argv, list(sys.path)
    sys.argv = [str(path), *args]
    sys.path.insert(0, str(path.resolve().parent))  # as `python SCRIPT`: the script's folder first
    try:
        runpy.run_path(str(path), run_name='__main__')
    except SystemExit as e:  # the script's own exit status, as the shell would see it
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    finally:
        sys.argv, sys.path[:] = argv, sys_path
    return 0


if __name__ == '__main__':
    if len(sys.argv) < 2:
        sys.exit('usage: python -m timm_kan.run_script SCRIPT [ARGS...]')
    sys.exit(run_script(sys.argv[1], sys.argv[2:]))

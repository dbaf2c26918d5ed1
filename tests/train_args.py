"""Argument names (argparse dests) of timm's ``train.py``, read from its source with ``ast``.

``python tests/train_args.py PATH/TO/train.py`` prints them; ``train_configs/timm_train_args.txt``
is that output for the release named in its header.
"""
import ast
import sys
from typing import Set


def train_py_arguments(source: str) -> Set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, 'attr', None) == 'add_argument'):
            continue
        dest = next((k.value.value for k in node.keywords if k.arg == 'dest'), None)
        flags = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if dest is None and flags:
            longs = [f for f in flags if f.startswith('--')]
            dest = (longs[0] if longs else flags[0]).lstrip('-').replace('-', '_')
        if dest:
            names.add(dest)
    return names


if __name__ == '__main__':
    with open(sys.argv[1]) as f:
        print('\n'.join(sorted(train_py_arguments(f.read()))))

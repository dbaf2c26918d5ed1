"""The package's layout: no import circle between its parts (the package root is the public face, imported last)."""
import ast
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1] / 'timm_kan'


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix('').parts)
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _part(module: str) -> str:
    """The unit a circle is counted between: the root, a top-level module or a sub-package."""
    return '.'.join(module.split('.')[:2])


def _imports(path: Path) -> Set[str]:
    """Every timm_kan module ``path`` imports, at module level or inside a function."""
    module = _module(path)
    package = module if path.name == '__init__.py' else module.rsplit('.', 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split('.')[:len(package.split('.')) - node.level + 1] if node.level else []
            target = '.'.join(base + ([node.module] if node.module else []))
            found |= {target} | {f'{target}.{a.name}' for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {t for t in found if t == 'timm_kan' or t.startswith('timm_kan.')}


def import_graph() -> Dict[str, Set[str]]:
    parts = {_part(_module(p)) for p in ROOT.rglob('*.py')}
    graph: Dict[str, Set[str]] = {}
    for path in ROOT.rglob('*.py'):
        source = _part(_module(path))
        graph.setdefault(source, set()).update(
            t for t in map(_part, _imports(path)) if t in parts and t != source)
    return graph


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one part (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_the_walk_sees_a_circle():
    assert circles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
    graph = import_graph()
    assert 'timm_kan.kernels' in graph['timm_kan.layers']  # the walk reads relative imports inside functions
    assert 'timm_kan.layers' not in graph['timm_kan.kernels']


def family_mentions(path: Path) -> List[str]:
    """Where code (not a docstring or comment) in ``path`` names a family: its kan_type or prefix as a string, or
    its layer or block class."""
    from timm_kan.layers import KAN_FAMILIES

    words = {f.kan_type for f in KAN_FAMILIES.values()} | {f.prefix for f in KAN_FAMILIES.values()}
    classes = {f.configured.__name__ for f in KAN_FAMILIES.values()}
    tree = ast.parse(path.read_text())
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in words and id(node) not in docstrings:
            found.append(f'{path.name}:{node.lineno} {node.value!r}')
        name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
        if name in classes:
            found.append(f'{path.name}:{node.lineno} {name}')
    return found


def test_no_module_outside_layers_special_cases_a_family():
    # the layers (a family's file and its table entry) and the kernels (one per family) are where families live
    outside = [p for p in ROOT.rglob('*.py') if p.relative_to(ROOT).parts[0] not in ('layers', 'kernels')]
    assert [m for p in sorted(outside) for m in family_mentions(p)] == []


def test_the_family_check_sees_a_special_case(tmp_path):
    path = tmp_path / 'special.py'
    path.write_text('"""rational"""\nif kan_type == "rational":\n    block = GRKANMlp\n')
    assert family_mentions(path) == ["special.py:2 'rational'", 'special.py:3 GRKANMlp']

"""Tables for README.md generated from the registry and the accounting function (never typed by hand)."""
import json
import re
from pathlib import Path
from typing import List, Optional, Union

import timm

from .accounting import count_flops, count_parameters
from .models.kan_vit import _ARCHS, KAN_FAMILIES

__all__ = ['registry_table', 'replace_block', 'update_readme']

_DESIGNS = {'vit': 'MLP (timm ViT)', 'chebykan_vit': 'Chebyshev KAN, degree 3',
            'kan_vit': 'B-spline KAN, grid 5, order 3'}


def registry_table() -> str:
    """Markdown table of every KAN-ViT size next to timm's ViT: parameters and forward GFLOPs at 224 px.

    Models are built on the meta device (no memory, no weights); FLOPs come from FlopCounterMode.
    """
    lines: List[str] = [
        '| model | alias | FFN | params (M) | FFN params (M) | GFLOPs | pretrained tag |',
        '|---|---|---|---|---|---|---|',
    ]
    for arch, (_, alias, hub_id, _) in _ARCHS.items():
        for family in ('vit', *KAN_FAMILIES):
            name = f'{family}_{arch}'
            model = timm.create_model(name, num_classes=1000, device='meta')
            counts = count_parameters(model)
            gflops = count_flops(model) / 1e9
            tag = f'`.{hub_id.split(".", 1)[1]}`' if family != 'vit' else ''
            short = f'`{family}_{alias}`' if family != 'vit' else ''
            lines.append(f'| `{name}` | {short} | {_DESIGNS[family]} | {counts["total"] / 1e6:.1f} | '
                         f'{counts["ffn"] / 1e6:.1f} | {gflops:.1f} | {tag} |')
    return '\n'.join(lines)


def replace_block(text: str, name: str, content: str) -> str:
    """Replace what stands between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""
    pattern = re.compile(rf'(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)', re.S)
    if not pattern.search(text):
        raise ValueError(f'no <!-- {name}:start --> ... <!-- {name}:end --> block found')
    return pattern.sub(lambda m: m.group(1) + content.rstrip('\n') + '\n' + m.group(2), text)


def update_readme(readme: Union[str, Path], compare_results: Optional[Union[str, Path]] = None) -> None:
    """Regenerate README.md's model table, and its comparison table from a ``results.json``."""
    from .compare import format_table

    readme = Path(readme)
    text = replace_block(readme.read_text(), 'models-table', registry_table())
    if compare_results:
        results = json.loads(Path(compare_results).read_text())['results']
        text = replace_block(text, 'compare-table', format_table(results))
    readme.write_text(text)

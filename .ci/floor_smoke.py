"""Smoke test of timm_kan at the dependency floors pyproject.toml states (run by .ci/floor-smoke).

``--pins`` prints the floors to install (torch excepted: the CI environment's torch is its floor).

Checks that the installed timm, huggingface_hub, safetensors and torch are exactly the floors, then imports
every module, builds each KAN family, runs forward and backward, and round-trips a model through
export_for_hub (timm's save_for_hf) and ``local-dir:``.
"""
import importlib
import os
import pkgutil
import re
import sys
import tempfile
import tomllib
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def floors():
    deps = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['dependencies']
    found = {}
    for dep in deps:
        m = re.match(r'^([A-Za-z0-9_.-]+)>=([0-9.]+)', dep)
        if m and m.group(1) in ('timm', 'huggingface_hub', 'safetensors', 'torch'):
            found[m.group(1)] = m.group(2)
    return found


def main() -> int:
    wanted = floors()
    assert set(wanted) == {'timm', 'huggingface_hub', 'safetensors', 'torch'}, wanted
    for name, floor in wanted.items():
        have = version(name).split('+')[0]
        assert have == floor, f'{name} {have} is installed, the floor is {floor}'
        print(f'{name} {have} (floor)')

    import timm
    import torch
    import timm_kan
    from timm_kan import KAN_FAMILIES, export_for_hub

    for mod in pkgutil.walk_packages(timm_kan.__path__, 'timm_kan.'):
        importlib.import_module(mod.name)
    small = dict(img_size=32, depth=1, num_classes=3)
    with tempfile.TemporaryDirectory() as tmp:
        for family in KAN_FAMILIES.values():
            torch.manual_seed(0)
            model = timm.create_model(f'{family.prefix}_t16', **small).eval()
            x = torch.randn(2, 3, 32, 32)
            model(x).sum().backward()
            assert all(p.grad is not None for p in model.parameters() if p.requires_grad), family.prefix
            out = export_for_hub(model, Path(tmp) / family.prefix)
            loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
            with torch.no_grad():
                assert torch.equal(loaded(x), model(x)), family.prefix
            print(f'{family.prefix}: forward, backward, save_for_hf -> local-dir: round trip ok')
        _push(model, Path(tmp))
    return 0


def _push(model, tmp: Path) -> None:
    """push_to_hub against the tests' recording stand-in for the Hub API on 127.0.0.1 (HF_ENDPOINT is set to it
    before huggingface_hub is first imported: older releases read it only then)."""
    from timm_kan import export_for_hub, push_to_hub

    push_to_hub(model, 'org/floor', token='hf_floor_token')
    reference = export_for_hub(model, tmp / 'reference', repo_id='org/floor')
    assert HUB.commits and sorted(HUB.commits[0]) == sorted(p.name for p in reference.iterdir()), HUB.requests
    assert all(content == (reference / name).read_bytes() for name, content in HUB.commits[0].items())
    print('push_to_hub: the exported folder uploaded in one commit')


if __name__ == '__main__':
    if sys.argv[1:] == ['--pins']:  # what .ci/floor-smoke installs beside the CI environment
        print(' '.join(f'{name}=={v}' for name, v in floors().items() if name != 'torch'))
        sys.exit(0)
    sys.path.insert(0, str(ROOT / 'tests'))
    from hub_server import HubRecorder

    with HubRecorder() as HUB:
        os.environ['HF_ENDPOINT'] = HUB.endpoint
        sys.exit(main())

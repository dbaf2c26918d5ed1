"""README.md, CI and train_configs stay true: generated tables, the CI command, real train.py arguments."""
import os
import re
from pathlib import Path

import pytest
import timm
import yaml

import timm_kan  # noqa: F401
from timm_kan.tables import registry_table

from train_args import train_py_arguments

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()


def _block(name: str) -> str:
    return re.search(rf'<!-- {name}:start -->\n(.*?)<!-- {name}:end -->', README, re.S).group(1).strip()


def test_ci_runs_the_readme_test_command():
    ci_commands = [line for line in (ROOT / '.ci' / 'run').read_text().splitlines() if 'pip install' in line]
    assert len(ci_commands) == 1
    assert f'```bash\n{ci_commands[0]}\n```' in README
    assert 'pytest' in ci_commands[0]


def test_readme_first_command_runs_compare():
    first = re.search(r'```bash\n(.*?)\n```', README).group(1)
    assert first.endswith('timm-kan compare') and 'pip install -e .' in first


def test_readme_model_table_is_the_generated_one():
    assert _block('models-table') == registry_table()


def test_readme_compare_table_was_pasted():
    table = _block('compare-table')
    for name in ('vit_tiny_patch16_224', 'chebykan_vit_tiny_patch16_224', 'kan_vit_tiny_patch16_224'):
        assert f'| {name} |' in table


def _known_train_args():
    path = os.environ.get('TIMM_TRAIN_PY')
    if path:
        return train_py_arguments(Path(path).read_text())
    lines = (ROOT / 'train_configs' / 'timm_train_args.txt').read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith('#')}


CONFIGS = sorted((ROOT / 'train_configs').glob('*.yaml'))


@pytest.mark.parametrize('path', CONFIGS, ids=[p.name for p in CONFIGS])
def test_train_config_keys_are_train_py_arguments(path):
    cfg = yaml.safe_load(path.read_text())
    unknown = set(cfg) - _known_train_args()
    assert not unknown, f'{path.name}: not arguments of timm train.py: {sorted(unknown)}'
    assert cfg['device_modules'] == ['timm_kan']
    model = timm.create_model(cfg['model'], num_classes=cfg['num_classes'], drop_path_rate=cfg.get('drop_path'),
                              device='meta')
    assert model.num_classes == cfg['num_classes']


def test_train_configs_cover_both_families_and_sizes():
    names = {p.stem for p in CONFIGS}
    for family in ('chebykan', 'kan'):
        assert f'seed_{family}_vit_b16_finetune' in names
        assert {f'in1k_{family}_vit_{s}' for s in ('t16', 's16', 'b16')} <= names

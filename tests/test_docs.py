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


def test_readme_mission_table_is_the_generated_one():
    from timm_kan.tables import mission_table
    assert _block('mission-table') == mission_table()


def test_readme_performance_section_is_the_generated_one():
    from timm_kan.tables import performance_section
    assert _block('performance') == performance_section()


def test_readme_cpu_performance_section_is_the_generated_one():
    from timm_kan.tables import cpu_performance_section
    assert _block('cpu-performance') == cpu_performance_section(ROOT / 'docs' / 'bench' / 'cpu-vit-t.json').strip()


@pytest.mark.parametrize('name', ['mnist5k', 'fashion10k'])
def test_readme_results_are_the_generated_ones(name):
    from timm_kan.tables import results_section
    table = _block(f'results-{name}')
    assert table == results_section(ROOT / 'docs' / 'results' / f'{name}.json').strip()
    for model in ('vit_tiny', 'chebykan_vit_tiny', 'kan_vit_tiny', 'rbfkan_vit_tiny', 'grkan_vit_tiny'):
        assert f'| {model}_patch16_224 |' in table and '| 3 |' in table


def test_update_readme_writes_a_bench_report(tmp_path):
    from timm_kan.bench import main as bench_main
    from timm_kan.tables import update_readme
    bench = tmp_path / 'bench.json'
    bench_main(['--tokens', '16', '--dim', '8', '--hidden', '16', '--reps', '1', '--warmup', '0',
                '--variants', 'chebyshev reference', '--json', str(bench)])
    readme = tmp_path / 'README.md'
    readme.write_text(README)
    update_readme(readme, bench_results=bench)
    text = readme.read_text()
    section = re.search(r'<!-- performance:start -->\n(.*?)<!-- performance:end -->', text, re.S).group(1)
    assert section.startswith('Measured ') and '| chebyshev reference |' in section
    assert '`timm-kan bench --tokens 16 --dim 8' in section
    assert 'Not measured yet' not in section and text.count('<!-- performance:start -->') == 1


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
    assert {f'in1k_grkan_vit_{s}_kat' for s in ('t16', 's16', 'b16')} <= names


@pytest.mark.skipif(not os.environ.get('TIMM_TRAIN_PY'), reason="set TIMM_TRAIN_PY to a timm checkout's train.py")
def test_timm_train_py_runs_the_seed_config(tmp_path):
    """timm's own train.py with the seed config: device_modules imports timm_kan, a ViT file is adapted."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file

    rng = np.random.RandomState(0)
    for split, n in (('train', 8), ('val', 4)):
        for name, rgb in {'red': (220, 30, 30), 'blue': (40, 50, 230)}.items():
            d = tmp_path / 'data' / split / name
            d.mkdir(parents=True)
            for i in range(n):
                img = np.clip(np.array(rgb) + rng.randint(-25, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f'{i}.png')
    save_file(timm.create_model('vit_tiny_patch16_224', img_size=32, depth=2, num_classes=0).state_dict(),
              str(tmp_path / 'vit.safetensors'))
    config = ROOT / 'train_configs/seed_chebykan_vit_b16_finetune.yaml'
    cmd = [sys.executable, os.environ['TIMM_TRAIN_PY'], '-c', str(config),
           '--data-dir', str(tmp_path / 'data'), '--model', 'chebykan_vit_t16', '--pretrained-path',
           str(tmp_path / 'vit.safetensors'), '--model-kwargs', 'img_size=32', 'depth=2', 'freeze=backbone',
           'kan_init=mlp', '--num-classes', '2', '--img-size', '32', '--epochs', '1', '-b', '4',
           '--validation-batch-size', '4', '--workers', '0', '--device', 'cpu', '--output', str(tmp_path / 'out')]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / 'out').glob('*/last.pth.tar'))

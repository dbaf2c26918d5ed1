"""A comparison people can trust: several seeds, equal parameters, Fashion-MNIST, and what was trained."""
import gzip
import json
import struct

import numpy as np
import pytest
import timm
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from timm_kan.cli import main as cli_main
from timm_kan.layers import coefficient_parameters
from timm_kan.comparison.param_match import count_params, match_hidden
from timm_kan.comparison.results import describe_trained, format_table
from timm_kan.comparison.trainer import optimizer_param_groups
from timm_kan.data.fashion_mnist import read_fashion_mnist
from timm_kan.data.sources import prepare_data
from timm_kan.io import DataError

TINY = ['--model-kwargs', 'img_size=16', 'patch_size=8', 'embed_dim=32', 'depth=1', 'num_heads=2']
TINY_KWARGS = dict(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=10)


def _compare(out, *extra):
    return cli_main(['compare', '--data', 'digits', '--max-items', '300', '--output', str(out), '--epochs', '2',
                     '--no-progress', '--no-explain', *extra])


def test_several_seeds_give_mean_and_spread(tmp_path, capsys):
    out = tmp_path / 'run'
    assert _compare(out, '--seeds', '2', '--models', 'vit_tiny_patch16_224', 'chebykan_vit_t16', *TINY) == 0
    table = capsys.readouterr().out
    saved = json.loads((out / 'results.json').read_text())
    runs = [(r['model'], r['seed']) for r in saved['results']]
    assert runs == [('vit_tiny_patch16_224', 0), ('vit_tiny_patch16_224', 1), ('chebykan_vit_t16', 0),
                    ('chebykan_vit_t16', 1)]
    assert saved['config']['seeds'] == [0, 1]
    assert saved['results'][0]['history'] != saved['results'][1]['history']  # the seeds differ
    row = next(line for line in table.splitlines() if line.startswith('| chebykan_vit_t16 |'))
    assert '| 2 |' in row and row.count(' ± ') == 3  # val loss, top-1, top-5
    assert (out / 'chebykan_vit_t16' / 'seed1' / 'checkpoint.pth.tar').is_file()
    header = (out / 'results.csv').read_text().splitlines()[0].split(',')
    assert header[:2] == ['model', 'seed']
    for png in ('accuracy.png', 'accuracy_vs_params.png'):
        assert (out / png).read_bytes()[:4] == b'\x89PNG'


def test_seed_list_and_seed_count_agree(tmp_path):
    a, b = tmp_path / 'a', tmp_path / 'b'
    assert _compare(a, '--seed', '3', '4', '--models', 'chebykan_vit_t16', *TINY) == 0
    assert _compare(b, '--seed', '3', '--seeds', '2', '--models', 'chebykan_vit_t16', *TINY) == 0
    ra, rb = (json.loads((p / 'results.json').read_text())['results'] for p in (a, b))
    keys = ('train_loss', 'val_loss', 'top1', 'top5')
    assert [[[h[k] for k in keys] for h in r['history']] for r in ra] == \
        [[[h[k] for k in keys] for h in r['history']] for r in rb]


@pytest.mark.parametrize('extra,message', [
    (['--seed', '-1'], 'seeds must be integers >= 0, got [-1]'),
    (['--seed', '1', '1'], 'seeds must differ'),
    (['--seeds', '0'], '--seeds must be >= 1, got 0'),
    (['--kan-lr-scale', '0'], '--kan-lr-scale must be > 0, got 0.0'),
    (['--kan-weight-decay', '-0.1'], '--kan-weight-decay must be >= 0, got -0.1'),
    (['--param-budget', '0.001'], 'no hidden width brings chebykan_vit_t16 within 2% of 0.001M parameters; '
                                  'the closest is kan_hidden=1'),
])
def test_bad_seeds_and_budgets_are_one_line(tmp_path, capsys, extra, message):
    assert _compare(tmp_path / 'o', '--models', 'chebykan_vit_t16', *extra, *TINY) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err


def test_seeds_without_a_value_is_refused(tmp_path):
    with pytest.raises(SystemExit) as e:
        _compare(tmp_path / 'o', '--seeds')
    assert e.value.code == 2


@pytest.mark.parametrize('name', ['chebykan_vit_t16', 'kan_vit_t16', 'rbfkan_vit_t16', 'grkan_vit_t16'])
def test_match_hidden_is_within_two_percent_of_the_vit(name):
    budget = count_params('vit_tiny_patch16_224', TINY_KWARGS)
    hidden = match_hidden(name, TINY_KWARGS, budget)
    assert abs(count_params(name, dict(TINY_KWARGS, kan_hidden=hidden)) - budget) <= 0.02 * budget
    if name == 'grkan_vit_t16':
        assert hidden % 8 == 0
    assert match_hidden('vit_tiny_patch16_224', TINY_KWARGS, budget) is None


def test_match_params_trains_at_equal_parameters_and_says_what_was_trained(tmp_path, capsys):
    out = tmp_path / 'm'
    assert _compare(out, '--match-params', '--models', 'vit_tiny_patch16_224', 'kan_vit_t16', *TINY) == 0
    vit, kan = json.loads((out / 'results.json').read_text())['results']
    assert abs(kan['params'] - vit['params']) <= 0.02 * vit['params'] and kan['hidden'] < vit['hidden']
    assert describe_trained(vit) == 'p8 w32 d1 h128'
    assert describe_trained(kan) == f'p8 w32 d1 h{kan["hidden"]}, grid 5, order 3'
    assert f'| p8 w32 d1 h{kan["hidden"]}, grid 5, order 3 | 1 |' in format_table([vit, kan])


def _write_idx(folder, name, array, magic, truncate=0):
    header = struct.pack('>II', magic, array.shape[0]) + (struct.pack('>II', 28, 28) if array.ndim == 3 else b'')
    with gzip.open(folder / f'{name}.gz', 'wb') as f:
        f.write((header + array.astype(np.uint8).tobytes())[:len(header) + array.size - truncate])


def _fashion(folder, n_train=30, n_test=12, labels_test=None, truncate=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    _write_idx(folder, 'train-images-idx3-ubyte', rng.randint(0, 255, (n_train, 28, 28)), 0x803, truncate)
    _write_idx(folder, 'train-labels-idx1-ubyte', np.arange(n_train) % 10, 0x801)
    _write_idx(folder, 't10k-images-idx3-ubyte', rng.randint(0, 255, (n_test, 28, 28)), 0x803)
    _write_idx(folder, 't10k-labels-idx1-ubyte', labels_test if labels_test is not None else np.arange(n_test) % 10,
               0x801)
    return folder


def test_fashion_mnist_reader_and_split(tmp_path):
    folder = _fashion(tmp_path / 'fm')
    sets = read_fashion_mnist(folder)
    assert sets['train'][0].shape == (30, 28, 28) and sets['val'][1].tolist() == [i % 10 for i in range(12)]
    root, classes = prepare_data(f'fashion-mnist:{folder}', tmp_path / 'out', max_items=20)
    assert classes[0] == 'T-shirt_top' and classes[-1] == 'Ankle_boot'
    assert len(list((root / 'train').rglob('*.png'))) == 20 and len(list((root / 'val').rglob('*.png'))) == 12


@pytest.mark.parametrize('setup,message', [
    (lambda d: _fashion(d, truncate=100), 'is truncated or padded: its header says 30 items of 784 bytes'),
    (lambda d: _fashion(d, labels_test=np.arange(11) % 10), 'val has 12 images but 11 labels'),
    (lambda d: d / 'nowhere', 'apt-get install dataset-fashion-mnist'),
])
def test_fashion_mnist_bad_files_are_one_error(tmp_path, setup, message):
    folder = setup(tmp_path / 'fm')
    with pytest.raises(DataError, match=message.replace('(', r'\(').replace(')', r'\)')):
        read_fashion_mnist(folder)


def test_kan_coefficients_get_their_own_learning_rate_and_weight_decay():
    model = timm.create_model('kan_vit_t16', **TINY_KWARGS)
    groups = optimizer_param_groups(model, weight_decay=0.05, kan_lr_scale=0.1, kan_weight_decay=0.0)
    optimizer = create_optimizer_v2(model, opt='adamw', lr=1e-3, param_group_fn=lambda m: groups)
    scheduler, _ = create_scheduler_v2(optimizer, sched='cosine', num_epochs=4, warmup_epochs=0)
    scheduler.step(1)
    coefficients = {id(p) for p in coefficient_parameters(model)}
    kan, = [g for g in optimizer.param_groups if any(id(p) in coefficients for p in g['params'])]
    others = [g for g in optimizer.param_groups if g is not kan]
    assert {id(p) for p in kan['params']} == coefficients  # all of them, and only them
    assert kan['weight_decay'] == 0.0 and sorted(g['weight_decay'] for g in others) == [0.0, 0.05]
    assert kan['lr'] == pytest.approx(0.1 * others[0]['lr']) and others[0]['lr'] == others[1]['lr']
    n_params = sum(p.numel() for g in optimizer.param_groups for p in g['params'])
    assert n_params == sum(p.numel() for p in model.parameters())


def test_kan_optimizer_options_are_recorded_with_the_recipe(tmp_path):
    out = tmp_path / 'run'
    assert _compare(out, '--models', 'chebykan_vit_t16', '--kan-lr-scale', '0.5', '--kan-weight-decay', '0', *TINY) == 0
    recipe = json.loads((out / 'results.json').read_text())['recipe_args']
    assert (recipe['kan_lr_scale'], recipe['kan_weight_decay'], recipe['weight_decay']) == (0.5, 0.0, 0.05)


def test_bundled_sets_compare_at_equal_parameters_unless_told_not_to(tmp_path):
    models = ['--models', 'vit_tiny_patch16_224', 'chebykan_vit_t16', *TINY]
    assert _compare(tmp_path / 'default', *models) == 0
    assert _compare(tmp_path / 'off', '--no-match-params', *models) == 0
    default, off = (json.loads((tmp_path / d / 'results.json').read_text()) for d in ('default', 'off'))
    budget = count_params('vit_tiny_patch16_224', TINY_KWARGS)
    assert default['config']['match_params'] is True and off['config']['match_params'] is False
    assert default['results'][1]['hidden'] == match_hidden('chebykan_vit_t16', TINY_KWARGS, budget)
    assert off['results'][1]['hidden'] == 4 * 32  # mlp_ratio x width


def test_trained_column_names_every_option_the_run_set():
    run = dict(model='chebykan_vit_t16', hidden=24, model_args=dict(
        patch_size=8, embed_dim=32, depth=1, kan_hidden=24, degree=4, kan_base='silu', kan_coeff_init='variance',
        kan_fused=False))
    assert describe_trained(run) == 'p8 w32 d1 h24, degree 4, kan_coeff_init=variance, kan_base=silu'


def test_trained_column_leaves_out_options_at_their_defaults():
    run = dict(model='kan_vit_t16', hidden=24, model_args=dict(
        patch_size=8, embed_dim=32, depth=1, kan_hidden=24, kan_base='silu', kan_mid_norm=True, grid_range=[-1, 1],
        kan_coeff_init='published'))
    assert describe_trained(run) == 'p8 w32 d1 h24, grid 5, order 3'
    run['model_args'].update(kan_mid_norm=False, grid_range=[-2, 2])
    assert describe_trained(run) == 'p8 w32 d1 h24, grid 5, order 3, grid_range=[-2, 2], kan_mid_norm=False'

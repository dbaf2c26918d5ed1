"""Nothing lost, nothing mixed: prepared splits, resumable compare, checkpoints loaded exactly, one-line errors.

Each test reproduces a failure a user met (train on the wrong data and exit 0, lose finished work, a traceback
where one line is due) and checks what happens now.
"""
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from timm_kan import CheckpointError
from timm_kan.comparison import trainer as trainer_module
from timm_kan.cli import main as cli_main
from timm_kan.comparison.run import kwargs_per_model
from timm_kan.data.sources import prepare_data
from timm_kan.data.split import split_class_map, split_image_folder
from timm_kan.io import DataError

from conftest import SMALL, make_vit

TINY = ['--model-kwargs', 'img_size=16', 'patch_size=8', 'embed_dim=32', 'depth=1', 'num_heads=2']


def _compare(data, out, *extra):
    return cli_main(['compare', '--data', str(data), '--output', str(out), '--recipe', 'small', '--batch-size', '8',
                     '--no-progress', '--no-explain', *extra])


def _files(root: Path, split: str):
    return sorted(str(p.relative_to(root / split)) for p in (root / split).rglob('*.png'))


# ---- 1. a prepared split is reused only when it was made from the same source and options ----

def test_split_is_rebuilt_when_seed_or_limit_changes(tmp_path):
    root, _ = prepare_data('digits', tmp_path, seed=0, max_items=200)
    first = (_files(root, 'train'), _files(root, 'val'))
    mtime = (root / 'split.json').stat().st_mtime_ns
    prepare_data('digits', tmp_path, seed=0, max_items=200)
    assert (root / 'split.json').stat().st_mtime_ns == mtime  # same options: reused, not rewritten
    prepare_data('digits', tmp_path, seed=1, max_items=200)
    second = (_files(root, 'train'), _files(root, 'val'))
    assert second != first and not set(second[0]) & set(second[1])
    prepare_data('digits', tmp_path, seed=1)
    assert len(_files(root, 'train')) + len(_files(root, 'val')) == 1797


def test_interrupted_split_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    import timm_kan.data.split as data_module
    calls = []

    def interrupted(root, split, *args):
        calls.append(split)
        if split == 'val':
            raise KeyboardInterrupt
        return original(root, split, *args)

    original = data_module._write_split
    monkeypatch.setattr(data_module, '_write_split', interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_data('digits', tmp_path, max_items=100)
    assert calls == ['train', 'val'] and not (tmp_path / 'data').exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.data')]
    monkeypatch.setattr(data_module, '_write_split', original)
    root, _ = prepare_data('digits', tmp_path, max_items=100)
    assert len(_files(root, 'train')) + len(_files(root, 'val')) == 100


def test_another_folder_or_seed_into_the_same_output_rebuilds(color_folder, tmp_path):
    other = tmp_path / 'other'
    for name in ('cat', 'dog'):
        (other / name).mkdir(parents=True)
        for i in range(5):
            Image.new('RGB', (8, 8), (i * 40, 0, 0)).save(other / name / f'{i}.png')
    out = tmp_path / 'out'
    _, classes = prepare_data(str(color_folder), out)
    assert classes == ['blue', 'green', 'red']
    _, classes = prepare_data(str(other), out)
    assert classes == ['cat', 'dog'] and sorted(p.name for p in (out / 'data' / 'train').iterdir()) == ['cat', 'dog']
    assert json.loads((out / 'class_indices.json').read_text()) == {'0': 'cat', '1': 'dog'}


def test_split_command_twice_with_other_seeds(color_folder, tmp_path, capsys):
    dst = tmp_path / 'split'
    assert cli_main(['split', str(color_folder), str(dst), '--seed', '0']) == 0
    first = _files(dst, 'val')
    assert cli_main(['split', str(color_folder), str(dst), '--seed', '5']) == 0
    second_train, second_val = _files(dst, 'train'), _files(dst, 'val')
    assert second_val != first and len(second_val) == len(first) and not set(second_train) & set(second_val)
    user_folder = tmp_path / 'mine'
    (user_folder / 'keep').mkdir(parents=True)
    assert cli_main(['split', str(color_folder), str(user_folder)]) == 2
    assert 'is not a split made by timm_kan' in capsys.readouterr().err and (user_folder / 'keep').is_dir()


# ---- 2. an empty validation split is an error, never the training set ----

@pytest.mark.parametrize('kwargs,message', [
    (dict(val_ratio=0.0), 'val-ratio must be between 0 and 1'),
    (dict(val_ratio=1.0), 'val-ratio must be between 0 and 1'),
    (dict(max_items=5), 'gives 5 training and 0 validation images'),
])
def test_empty_validation_split_is_an_error(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=message):
        prepare_data('digits', tmp_path, **kwargs)


def test_four_images_per_class_is_an_error(tmp_path):
    src = tmp_path / 'four'
    for name in ('a', 'b'):
        (src / name).mkdir(parents=True)
        for i in range(4):
            Image.new('RGB', (8, 8)).save(src / name / f'{i}.png')
    with pytest.raises(DataError, match='8 training and 0 validation images'):
        split_image_folder(src, tmp_path / 'dst', 0.2, 0)


# ---- 3. a pre-split folder: validation is read with the training class map ----

def _presplit(root: Path, train, val) -> Path:
    colors = {'a': (255, 0, 0), 'b': (0, 255, 0), 'c': (0, 0, 255), 'd': (9, 9, 9)}
    for split, names in (('train', train), ('val', val)):
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new('RGB', (8, 8), colors[name]).save(root / split / name / f'{i}.png')
    return root


def test_val_missing_a_class_keeps_the_training_labels(tmp_path, caplog):
    root = _presplit(tmp_path / 'd', ['a', 'b', 'c'], ['a', 'c'])
    with caplog.at_level(logging.WARNING):
        data_root, classes = prepare_data(str(root), tmp_path / 'out')
    assert classes == ['a', 'b', 'c'] and 'no validation images of class(es) b' in caplog.text
    val = timm.data.create_dataset('', root=str(data_root), split='val', class_map=split_class_map(classes))
    labels = {Path(val.filename(i)).parent.name: val[i][1] for i in range(len(val))}
    assert labels == {'a': 0, 'c': 2}


def test_val_class_unknown_to_training_is_an_error(tmp_path):
    root = _presplit(tmp_path / 'd', ['a', 'b'], ['a', 'd'])
    with pytest.raises(DataError, match='classes the training split lacks: d'):
        prepare_data(str(root), tmp_path / 'out')


# ---- 4 / 5. the package's own checkpoints by file, and a head that fits ----

@pytest.mark.parametrize('suffix', ['safetensors', 'pth'])
@pytest.mark.parametrize('name', ['chebykan_vit_t16', 'kan_vit_t16', 'rbfkan_vit_t16', 'grkan_vit_t16'])
def test_own_kan_checkpoint_loads_exactly_by_file(tmp_path, name, suffix):
    torch.manual_seed(0)
    trained = timm.create_model(name, num_classes=10, **SMALL).eval()
    path = tmp_path / f'own.{suffix}'
    save_file(trained.state_dict(), str(path)) if suffix == 'safetensors' else torch.save(trained.state_dict(), path)
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=10,
                               **SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))
    assert loaded.checkpoint_layout == 'kan' and all(p.requires_grad for p in loaded.parameters())


def test_vit_head_that_fits_is_kept(vit_checkpoint):
    kan = timm.create_model('chebykan_vit_t16', pretrained=True, num_classes=7,
                            pretrained_cfg_overlay=dict(file=str(vit_checkpoint['files']['safetensors'])), **SMALL)
    assert torch.equal(kan.head.weight, vit_checkpoint['state']['head.weight'])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (kan.eval()(x) - vit_checkpoint['vit'](x)).abs().max() < 1e-4


# ---- 6. an interrupted compare keeps its work and --resume finishes it as if never interrupted ----

def test_interrupted_compare_resumes_to_the_uninterrupted_result(color_folder, tmp_path, monkeypatch, capsys):
    models = ['vit_tiny_patch16_224', 'chebykan_vit_t16']
    args = ['--epochs', '2', '--models', *models, *TINY]
    assert _compare(color_folder, tmp_path / 'whole', *args) == 0
    whole = json.loads((tmp_path / 'whole' / 'results.json').read_text())['results']

    original = trainer_module._train_epoch
    seen = []

    def interrupt_second_model_second_epoch(run, *a):
        seen.append(run.name)
        if seen.count('chebykan_vit_t16') == 2:
            raise KeyboardInterrupt
        return original(run, *a)

    monkeypatch.setattr(trainer_module, '_train_epoch', interrupt_second_model_second_epoch)
    out = tmp_path / 'cut'
    assert _compare(color_folder, out, *args) == 130  # Ctrl-C: one line, status 130
    assert not (out / '.timm_kan.lock').exists()
    partial = json.loads((out / 'results.json').read_text())['results']
    assert [(r['model'], r['complete'], len(r['history'])) for r in partial] == [
        ('vit_tiny_patch16_224', True, 2), ('chebykan_vit_t16', False, 1)]
    assert (out / 'results.csv').is_file() and (out / 'chebykan_vit_t16' / 'checkpoint.pth.tar').is_file()

    monkeypatch.setattr(trainer_module, '_train_epoch', original)
    capsys.readouterr()
    assert _compare(color_folder, out, *args) == 2
    assert 'pass --resume to continue it, --overwrite to start again' in capsys.readouterr().err
    assert _compare(color_folder, out, *args, '--seed', '1', '--resume') == 2
    assert "seed: 0 then, 1 now" in capsys.readouterr().err
    assert _compare(color_folder, out, *args, '--resume') == 0
    resumed = json.loads((out / 'results.json').read_text())['results']
    keys = ('train_loss', 'val_loss', 'top1', 'top5', 'lr')
    for a, b in zip(whole, resumed):
        assert [[h[k] for k in keys] for h in a['history']] == [[h[k] for k in keys] for h in b['history']]
    assert _compare(color_folder, out, *args, '--overwrite') == 0


# ---- 7. one line where a traceback was ----

def test_kan_options_go_only_to_the_models_that_take_them(caplog):
    models = ['vit_tiny_patch16_224', 'chebykan_vit_t16', 'kan_vit_t16']
    with caplog.at_level(logging.WARNING):
        per_model = kwargs_per_model(models, dict(degree=4, depth=2))
    assert per_model == {'vit_tiny_patch16_224': dict(depth=2), 'chebykan_vit_t16': dict(degree=4, depth=2),
                         'kan_vit_t16': dict(depth=2)}
    assert '--model-kwargs degree=4 applies only to chebykan_vit_t16' in caplog.text
    with pytest.raises(ValueError, match='rbf_basis: none of the models takes it .* families that do: rbfkan_vit_'):
        kwargs_per_model(models, dict(rbf_basis='rswaf'))


@pytest.mark.parametrize('extra,message', [
    (['--epochs', '0'], '--epochs must be an integer >= 1, got 0'),
    (['--val-ratio', '1.5'], '--val-ratio must be between 0 and 1'),
    (['--models', 'vit_tiny_patch16_224', '--model-kwargs', 'grid_size=4'], 'grid_size: none of the models takes it'),
])
def test_compare_bad_options_are_one_line(tmp_path, capsys, extra, message):
    assert _compare('digits', tmp_path / 'out', *extra) == 2
    err = capsys.readouterr().err
    assert message in err and 'Traceback' not in err


def test_output_that_is_a_file_and_missing_gpu(tmp_path, capsys):
    target = tmp_path / 'file.txt'
    target.write_text('x')
    assert _compare('digits', target, '--epochs', '1') == 2
    assert 'is an existing file, not a folder' in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert _compare('digits', tmp_path / 'o', '--device', 'cuda') == 2
        assert '--device cuda: no CUDA device is available' in capsys.readouterr().err


def test_predict_plain_vit_with_a_kan_checkpoint(tmp_path, capsys):
    kan = timm.create_model('chebykan_vit_t16', num_classes=3, **SMALL)
    path = tmp_path / 'ckpt.pth.tar'
    torch.save(dict(state_dict=kan.state_dict(), arch='chebykan_vit_t16', model_args=dict(SMALL, degree=3)), path)
    image = tmp_path / 'x.png'
    Image.new('RGB', (32, 32)).save(image)
    assert cli_main(['predict', '--model', 'vit_tiny_patch16_224', '--checkpoint', str(path), str(image)]) == 2
    assert 'holds a chebykan_vit_t16 (a Chebyshev KAN ViT), not a vit_tiny_patch16_224' in capsys.readouterr().err


def test_convert_refuses_a_plain_vit_target_and_resamples_only_on_request(tmp_path, capsys):
    vit8 = make_vit(num_classes=3, patch_size=8)
    path = tmp_path / 'vit_patch8.safetensors'
    save_file(vit8.state_dict(), str(path))
    assert cli_main(['convert', '--model', 'vit_tiny_patch16_224', '--checkpoint', str(path), '--out',
                     str(tmp_path / 'o')]) == 2
    assert 'is not a KAN-ViT' in capsys.readouterr().err
    base = ['convert', '--model', 'chebykan_vit_t16', '--checkpoint', str(path), '--num-classes', '3',
            '--model-kwargs', 'img_size=32', 'depth=2']
    assert cli_main(base + ['--out', str(tmp_path / 'a')]) == 2
    err = capsys.readouterr().err
    assert 'patch_embed.proj.weight is (192, 3, 8, 8) but chebykan_vit_t16 has (192, 3, 16, 16)' in err
    assert not (tmp_path / 'a').exists()
    assert cli_main(base + ['--out', str(tmp_path / 'b'), '--resample']) == 0
    assert (tmp_path / 'b' / 'model.safetensors').is_file()


def test_push_metrics_must_be_an_object_and_leave_nothing(tmp_path, capsys):
    kan = timm.create_model('chebykan_vit_t16', num_classes=3, **SMALL)
    path = tmp_path / 'ckpt.pth.tar'
    torch.save(dict(state_dict=kan.state_dict(), arch='chebykan_vit_t16', model_args=dict(SMALL)), path)
    out = tmp_path / 'export'
    assert cli_main(['push', str(path), '--model', 'chebykan_vit_t16', '--repo-id', 'org/n', '--metrics', '[1,2]',
                     '--export-only', str(out)]) == 2
    assert '--metrics must be a JSON object' in capsys.readouterr().err and not out.exists()


def test_random_bytes_npz_names_the_file_not_pickle(tmp_path):
    path = tmp_path / 'random.npz'
    path.write_bytes(np.random.RandomState(0).bytes(4096))
    with pytest.raises(CheckpointError, match='random.npz is not a NumPy .npz ViT checkpoint') as e:
        timm.create_model('chebykan_vit_t16', pretrained=True, num_classes=3,
                          pretrained_cfg_overlay=dict(file=str(path), custom_load=True), **SMALL)
    assert 'allow_pickle' not in str(e.value)


@pytest.mark.parametrize('grid_range,message', [
    ((-1.0, 0.0, 1.0), 'grid_range must be two numbers'),
    (1.0, 'grid_range must be two numbers'),
    ((-math.inf, math.inf), 'grid_range must have finite bounds'),
])
def test_grid_range_must_be_two_finite_numbers(grid_range, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model('kan_vit_t16', grid_range=grid_range, **SMALL)


def test_negative_class_count_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(['convert', '--model', 'kan_vit_t16', '--checkpoint', 'x.pth', '--out', 'o', '--num-classes', '-3'])
    assert e.value.code == 2 and 'must be an integer >= 1, got -3' in capsys.readouterr().err


# ---- 8. predict reports each bad image and predicts the rest ----

def test_predict_reports_bad_images_and_predicts_the_rest(tmp_path, capsys):
    kan = timm.create_model('chebykan_vit_t16', num_classes=2, **SMALL)
    path = tmp_path / 'ckpt.pth.tar'
    torch.save(dict(state_dict=kan.state_dict(), arch='chebykan_vit_t16', model_args=dict(SMALL)), path)
    good = tmp_path / 'good.png'
    Image.new('RGB', (32, 32)).save(good)
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not an image')
    rc = cli_main(['predict', '--model', 'chebykan_vit_t16', '--checkpoint', str(path), str(bad), str(good),
                   str(tmp_path / 'missing.png')])
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.out.splitlines()[0] == str(good) and len(captured.out.splitlines()) == 3
    assert 'cannot read image' in captured.err and 'image not found' in captured.err
    assert '2 of 3 image(s) could not be read' in captured.err

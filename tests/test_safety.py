"""Never destroy what the user had, never mix runs: each test reproduces a failure an outside check met.

Output folders (never `.`, an input, or a folder another command or a user made), one run per folder (a lock),
a resumed run that is the same run, classes that are what the user meant, one preprocessing from compare to
predict, and a diverging model that stops alone.
"""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from conftest import image_folder as _folder
from timm_kan.cli import main as cli_main
from timm_kan.data.sources import prepare_data
from timm_kan.io import DataError

TINY = ['--model-kwargs', 'img_size=16', 'patch_size=8', 'embed_dim=32', 'depth=1', 'num_heads=2']


def _compare(data, out, *extra):
    return cli_main(['compare', '--data', str(data), '--output', str(out), '--recipe', 'small', '--batch-size', '8',
                     '--epochs', '1', '--no-progress', '--no-explain', '--models', 'vit_tiny_patch16_224', *TINY,
                     *extra])


def _tiny_checkpoint(path: Path) -> Path:
    model = timm.create_model('chebykan_vit_t16', img_size=32, depth=1, num_classes=3)
    torch.save({'state_dict': model.state_dict(), 'arch': 'chebykan_vit_t16',
                'model_args': dict(img_size=32, depth=1)}, path)
    return path


def _one_error_line(capsys, *words):
    """Exactly one error line on stderr (progress lines of epochs trained before it aside), no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'Traceback' not in err, err
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


# ---- 1. no command deletes or overwrites what it did not create ----

@pytest.mark.parametrize('command', ['push', 'convert'])
def test_current_folder_as_output_keeps_every_file(tmp_path, monkeypatch, capsys, command):
    proj = tmp_path / 'proj'
    proj.mkdir()
    (proj / 'notes.txt').write_text('mine')
    checkpoint = _tiny_checkpoint(proj / 'ck.pth.tar')
    monkeypatch.chdir(proj)
    if command == 'push':
        argv = ['push', 'ck.pth.tar', '--model', 'chebykan_vit_t16', '--repo-id', 'me/x', '--export-only', '.']
    else:
        argv = ['convert', '--model', 'chebykan_vit_t16', '--checkpoint', 'ck.pth.tar', '--out', '.']
    for extra in ([], ['--overwrite']):
        assert cli_main(argv + extra) == 2
        _one_error_line(capsys, 'current folder')
    assert sorted(p.name for p in proj.iterdir()) == ['ck.pth.tar', 'notes.txt']
    assert (proj / 'notes.txt').read_text() == 'mine' and checkpoint.stat().st_size > 0


def test_export_into_a_users_folder_needs_overwrite_and_touches_only_its_files(tmp_path, capsys):
    checkpoint = _tiny_checkpoint(tmp_path / 'ck.pth.tar')
    out = tmp_path / 'mine'
    out.mkdir()
    (out / 'notes.txt').write_text('mine')
    (out / 'config.json').write_text('{"user": true}')
    argv = ['push', str(checkpoint), '--model', 'chebykan_vit_t16', '--repo-id', 'me/x', '--export-only', str(out)]
    assert cli_main(argv) == 2
    _one_error_line(capsys, str(out), '--overwrite')
    assert json.loads((out / 'config.json').read_text()) == {'user': True}
    assert cli_main(argv + ['--overwrite']) == 0
    assert (out / 'notes.txt').read_text() == 'mine'
    assert json.loads((out / 'config.json').read_text())['architecture'] == 'chebykan_vit_t16'
    # a folder an export made is the export's own: written again without --overwrite, the user's file still kept
    fresh = tmp_path / 'fresh'
    assert cli_main(argv[:-1] + [str(fresh)]) == 0
    (fresh / 'notes.txt').write_text('added later')
    assert cli_main(argv[:-1] + [str(fresh)]) == 0
    assert (fresh / 'notes.txt').read_text() == 'added later'
    assert sorted(p.name for p in fresh.iterdir()) == ['README.md', 'config.json', 'model.safetensors', 'notes.txt']


def test_output_holding_or_inside_the_input_is_refused(tmp_path, capsys):
    checkpoint = _tiny_checkpoint(tmp_path / 'ck.pth.tar')
    argv = ['convert', '--model', 'chebykan_vit_t16', '--checkpoint', str(checkpoint), '--overwrite', '--out']
    assert cli_main(argv + [str(tmp_path)]) == 2
    _one_error_line(capsys, 'holds the input')
    data = _folder(tmp_path / 'data')
    assert _compare(data, data / 'out') == 2
    _one_error_line(capsys, 'lies inside the input')
    assert _compare(data, data) == 2
    _one_error_line(capsys, 'lies inside the input')
    assert sorted(p.name for p in data.iterdir()) == ['cat', 'dog']


def test_compare_into_a_users_folder_is_refused(tmp_path, capsys):
    data = _folder(tmp_path / 'data')
    out = tmp_path / 'results'
    out.mkdir()
    (out / 'thesis.tex').write_text('mine')
    assert _compare(data, out) == 2
    _one_error_line(capsys, 'was not made by timm-kan compare')
    assert [p.name for p in out.iterdir()] == ['thesis.tex']


# ---- 2. one run owns its output folder ----

def test_a_second_run_into_a_locked_folder_names_the_holder(tmp_path):
    from timm_kan.io import LOCK_FILE, OutputError, output_lock

    with output_lock(tmp_path / 'out'):
        with pytest.raises(OutputError, match=f'in use by another run \\(pid {os.getpid()}'):
            with output_lock(tmp_path / 'out'):
                pass
    assert not (tmp_path / 'out' / LOCK_FILE).exists()


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    import socket

    from timm_kan.io import LOCK_FILE, output_lock

    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps(dict(pid=dead.pid, host=socket.gethostname(), command='x')))
    with caplog.at_level(logging.WARNING), output_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())['pid'] == os.getpid()
    assert 'no longer running' in caplog.text and not (tmp_path / LOCK_FILE).exists()


def test_compare_refuses_a_folder_another_run_holds(tmp_path, capsys):
    from timm_kan.io import output_lock

    data = _folder(tmp_path / 'data')
    out = tmp_path / 'out'
    with output_lock(out):
        assert _compare(data, out) == 2
    _one_error_line(capsys, 'in use by another run')


def test_checkpoint_temporary_files_are_unique(tmp_path):
    data = _folder(tmp_path / 'data')
    assert _compare(data, tmp_path / 'out') == 0
    leftovers = [p for p in (tmp_path / 'out').rglob('*') if p.name.endswith('.tmp')]
    assert not leftovers
    import inspect
    from timm_kan.comparison import trainer
    assert "path.name + '.tmp'" not in inspect.getsource(trainer)


# ---- 3. a resumed run is the same run ----

@pytest.mark.parametrize('change,message', [
    ('add', 'cat: 6 -> 8'), ('remove', 'dog: 6 -> 5'), ('class', 'class bird added'), ('rewrite', 'cat: files'),
])
def test_resume_after_the_data_changed_names_it_and_writes_nothing(tmp_path, capsys, change, message):
    data = _folder(tmp_path / 'data')
    out = tmp_path / 'out'
    assert _compare(data, out) == 0
    before = {p: os.lstat(p).st_mtime_ns for p in out.rglob('*')}
    if change == 'add':
        _folder(tmp_path / 'more', classes=('cat',), count=2, seed=5)
        for p in (tmp_path / 'more' / 'cat').iterdir():
            p.rename(data / 'cat' / f'new_{p.name}')
    elif change == 'remove':
        (data / 'dog' / '00.png').unlink()
    elif change == 'class':
        _folder(data, classes=('bird',), seed=3)
    else:
        Image.new('RGB', (30, 30)).save(data / 'cat' / '00.png')
    capsys.readouterr()
    assert _compare(data, out, '--resume') == 2
    _one_error_line(capsys, '--resume', message, 'nothing was written')
    assert {p: os.lstat(p).st_mtime_ns for p in out.rglob('*')} == before


def test_resume_with_a_checkpoint_of_another_kind_is_one_line(tmp_path, capsys):
    data = _folder(tmp_path / 'data')
    out = tmp_path / 'out'
    assert _compare(data, out, '--epochs', '2') == 0
    results = json.loads((out / 'results.json').read_text())
    results['results'][0]['complete'] = False  # as if interrupted: the checkpoint is what resume continues from
    (out / 'results.json').write_text(json.dumps(results))
    torch.save([1, 2, 3], out / 'vit_tiny_patch16_224' / 'checkpoint.pth.tar')
    assert _compare(data, out, '--epochs', '2', '--resume') == 2
    _one_error_line(capsys, 'is not a checkpoint timm-kan compare wrote')


# ---- 4. what trains is what the user meant ----

def test_empty_hidden_and_output_folders_are_not_classes(tmp_path, caplog):
    data = _folder(tmp_path / 'data')
    (data / 'empty').mkdir()
    (data / '.hidden').mkdir()
    _folder(data / '.hidden', classes=('x',), count=2)
    (data / 'old_run').mkdir()
    (data / 'old_run' / '.timm_kan.json').write_text('{"kind": "compare"}')
    _folder(data / 'old_run', classes=('y',), count=2)
    Image.new('RGB', (8, 8)).save(data / 'old_run' / 'z.png')
    with caplog.at_level(logging.WARNING):
        _, classes = prepare_data(str(data), tmp_path / 'out')
    assert classes == ['cat', 'dog']
    assert 'empty (no images)' in caplog.text and 'old_run (a timm-kan output)' in caplog.text


def test_a_class_of_unreadable_images_is_dropped_and_named(tmp_path, caplog):
    data = _folder(tmp_path / 'data', classes=('cat', 'dog', 'eel'))
    for p in (data / 'eel').iterdir():
        p.write_bytes(b'not an image')
    with caplog.at_level(logging.WARNING):
        _, classes = prepare_data(str(data), tmp_path / 'out')
    assert classes == ['cat', 'dog'] and 'eel: 6 of 6' in caplog.text
    assert '00.png' in caplog.text
    for p in (data / 'dog').iterdir():
        p.write_bytes(b'not an image')
    with pytest.raises(DataError, match=r'holds images of 1 class\(es\) \(cat\) once unreadable'):
        prepare_data(str(data), tmp_path / 'out2')


def test_a_sixteen_bit_image_trains_as_what_it_shows(tmp_path):
    """A 16-bit grey image (values around 30,000 of 65,535) reaches the model mid-grey, not clipped to white."""
    from timm_kan.comparison.trainer import RunContext, _loaders

    data = _folder(tmp_path / 'data')
    Image.fromarray(np.full((20, 20), 30000, dtype=np.uint16)).save(data / 'cat' / 'deep.png')
    root, classes = prepare_data(str(data), tmp_path / 'out', val_ratio=0.5)
    recipe = dict(batch_size=64, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    ctx = RunContext(data_root=root, classes=classes, recipe=recipe, device=torch.device('cpu'), out_dir=tmp_path)
    config = dict(input_size=(3, 20, 20), interpolation='bilinear', mean=(0, 0, 0), std=(1, 1, 1), crop_pct=1.0,
                  crop_mode='center')
    seen = []
    for loader in _loaders(ctx, config):
        for i, (path, _) in enumerate(loader.dataset.reader.samples):
            if path.endswith('deep.png'):
                seen.append(loader.dataset[i][0].mean().item())
    assert seen == [pytest.approx(30000 / 65535, abs=0.01)]


# ---- 5. one preprocessing from compare to predict and export ----

def test_predict_reproduces_compares_validation_image_for_image(tmp_path):
    from timm_kan.hub import export_for_hub, model_from_checkpoint
    from timm_kan.predict import predict_images
    from timm_kan.comparison.trainer import RunContext, _loaders

    data = _folder(tmp_path / 'data', classes=('a', 'b', 'c'), count=10, size=24)
    out = tmp_path / 'out'
    assert cli_main(['compare', '--data', str(data), '--output', str(out), '--recipe', 'seed', '--epochs', '1',
                     '--no-progress', '--no-explain', '--models', 'chebykan_vit_t16', *TINY]) == 0
    checkpoint = out / 'chebykan_vit_t16' / 'checkpoint.pth.tar'
    model, meta = model_from_checkpoint('chebykan_vit_t16', checkpoint)
    assert meta['data_config']['crop_pct'] == 0.875 and model.pretrained_cfg['crop_pct'] == 0.875
    model.eval()
    recipe = dict(batch_size=64, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    ctx = RunContext(data_root=out / 'data', classes=['a', 'b', 'c'], recipe=recipe, device=torch.device('cpu'),
                     out_dir=out)
    _, val = _loaders(ctx, meta['data_config'])
    with torch.no_grad():
        reference = torch.cat([model(x) for x, _ in val]).softmax(-1)
    paths = [p for p, _ in val.dataset.reader.samples]
    predicted = predict_images(model, ['a', 'b', 'c'], paths, top_k=1)
    assert [p[0][0] for p in predicted] == [['a', 'b', 'c'][i] for i in reference.argmax(-1).tolist()]
    assert [p[0][1] for p in predicted] == pytest.approx(reference.max(-1).values.tolist(), abs=1e-6)
    exported = export_for_hub(model, tmp_path / 'export')
    assert json.loads((exported / 'config.json').read_text())['pretrained_cfg']['crop_pct'] == 0.875
    again = timm.create_model(f'local-dir:{exported}', pretrained=True).eval()
    assert [p[0][1] for p in predict_images(again, ['a', 'b', 'c'], paths, top_k=1)] == pytest.approx(
        reference.max(-1).values.tolist(), abs=1e-6)


# ---- 6. a diverging model stops alone ----

def test_a_non_finite_loss_stops_that_model_and_the_others_run(tmp_path, monkeypatch, capsys):
    data = _folder(tmp_path / 'data')
    out = tmp_path / 'out'
    create = timm.create_model

    def diverging(name, **kwargs):
        model = create(name, **kwargs)
        if name == 'chebykan_vit_t16':
            calls = []

            def hook(module, args, output):
                calls.append(1)
                return output * float('nan') if module.training and len(calls) > 3 else output
            model.register_forward_hook(hook)
        return model

    monkeypatch.setattr(timm, 'create_model', diverging)
    code = cli_main(['compare', '--data', str(data), '--output', str(out), '--recipe', 'small', '--batch-size', '4',
                     '--epochs', '2', '--no-progress', '--no-explain', '--models', 'chebykan_vit_t16',
                     'vit_tiny_patch16_224', *TINY])
    assert code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert err == ['error: chebykan_vit_t16 (seed 0): training loss is nan at epoch 2, step 1; this model stopped, '
                   'its checkpoint of epoch 1 is kept']
    results = json.loads((out / 'results.json').read_text())
    assert [r['model'] for r in results['results']] == ['vit_tiny_patch16_224'] and results['results'][0]['complete']
    assert results['failed'][0]['model'] == 'chebykan_vit_t16'
    kept = torch.load(out / 'chebykan_vit_t16' / 'checkpoint.pth.tar', map_location='cpu', weights_only=True)
    assert kept['epoch'] == 1 and all(torch.isfinite(v).all() for v in kept['state_dict'].values())


# ---- labels by name wherever a class map meets data ----

def _named_checkpoint(path: Path, names) -> Path:
    model = timm.create_model('chebykan_vit_t16', img_size=32, depth=1, num_classes=len(names))
    torch.save({'state_dict': model.state_dict(), 'arch': 'chebykan_vit_t16', 'model_args': dict(img_size=32, depth=1),
                'class_map': {str(i): n for i, n in enumerate(names)}}, path)
    return path


def test_explain_reads_labels_in_the_models_class_order(tmp_path, capsys):
    from timm_kan.explain.command import _model_classes

    assert _model_classes('d', ['cat', 'dog'], ['eel', 'cat', 'dog']) == ['eel', 'cat', 'dog']
    checkpoint = _named_checkpoint(tmp_path / 'ck.pth.tar', ['eel', 'cat', 'dog'])
    data = _folder(tmp_path / 'data', classes=('cat', 'dog', 'fox'))
    assert cli_main(['explain', str(checkpoint), '--data', str(data), '--out', str(tmp_path / 'ex')]) == 2
    _one_error_line(capsys, 'classes the model was not trained on: fox')


def test_explain_into_a_users_folder_is_refused(tmp_path, capsys):
    checkpoint = _named_checkpoint(tmp_path / 'ck.pth.tar', ['cat', 'dog'])
    out = tmp_path / 'paper'
    out.mkdir()
    (out / 'figure.png').write_bytes(b'mine')
    argv = ['explain', str(checkpoint), '--data', str(_folder(tmp_path / 'data')), '--out', str(out), '--images', '8']
    assert cli_main(argv) == 2
    _one_error_line(capsys, 'was not made by timm-kan explain')
    assert cli_main(argv + ['--overwrite']) == 0
    assert (out / 'figure.png').read_bytes() == b'mine' and (out / 'overview.png').is_file()
    assert cli_main(argv) == 0  # its own folder now


def test_predict_refuses_a_class_map_that_reorders_the_models(tmp_path, capsys):
    checkpoint = _named_checkpoint(tmp_path / 'ck.pth.tar', ['cat', 'dog'])
    image = tmp_path / 'x.png'
    Image.new('RGB', (32, 32)).save(image)
    swapped = tmp_path / 'swapped.json'
    swapped.write_text(json.dumps({'0': 'dog', '1': 'cat'}))
    argv = ['predict', '--model', 'chebykan_vit_t16', '--checkpoint', str(checkpoint), str(image)]
    assert cli_main(argv[:-1] + ['--class-map', str(swapped), str(image)]) == 2
    _one_error_line(capsys, "class 0 is 'dog' there, 'cat' in the model")
    assert cli_main(argv) == 0


def test_an_earlier_versions_run_without_a_mark_can_be_resumed(tmp_path, capsys):
    """A folder holding compare's results.json but no mark (written before marks existed) can be resumed."""
    data = _folder(tmp_path / 'data')
    out = tmp_path / 'out'
    assert _compare(data, out) == 0
    (out / '.timm_kan.json').unlink()
    assert _compare(data, out, '--resume') == 0
    (out / '.timm_kan.json').unlink()
    (out / 'results.json').write_text('{"mine": 1}')  # a results.json of something else is not compare's
    assert _compare(data, out, '--resume') == 2
    _one_error_line(capsys, 'was not made by timm-kan compare')

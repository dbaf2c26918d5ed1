"""Hub export and push: the uploaded folder, the round trip through local-dir:, train.py checkpoints, bad input."""
import argparse
import json

import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from safetensors.torch import load_file

import timm_kan
from timm_kan.cli import main as cli_main
from timm_kan.hub import export_for_hub, push_to_hub

from hub_server import HubRecorder

FAMILIES = {
    'chebykan_vit_t16': dict(degree=4, kan_mid_norm=False),
    'kan_vit_t16': dict(grid_size=6, spline_order=2, kan_hidden=48),
}
SMALL = dict(img_size=32, depth=2)


def _model(name, num_classes=3, seed=0):
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=num_classes, **SMALL, **FAMILIES[name]).eval()


@pytest.fixture
def hub(monkeypatch):
    with HubRecorder() as recorder:
        monkeypatch.setattr(hf_constants, 'ENDPOINT', recorder.endpoint)
        monkeypatch.setattr(hf_constants, 'HUGGINGFACE_CO_URL_TEMPLATE',
                            recorder.endpoint + '/{repo_id}/resolve/{revision}/{filename}')
        yield recorder


@pytest.mark.parametrize('name', list(FAMILIES))
def test_export_folder_config_and_card(tmp_path, name):
    model = _model(name)
    out = export_for_hub(model, tmp_path / 'export', repo_id='org/kan-model', label_names=['cat', 'dog', 'eel'],
                         metrics={'top1': 91.5}, dataset='flowers-5', recipe='seed fine-tune, 10 epochs')
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((out / 'config.json').read_text())
    assert config['architecture'] == name
    assert config['label_names'] == ['cat', 'dog', 'eel']
    for key, value in FAMILIES[name].items():
        assert config['model_args'][key] == value
    assert config['model_args']['kan_base'] in ('none', 'silu')
    assert not {'freeze', 'kan_init', 'pretrained_strict'} & set(config['model_args'])
    card = (out / 'README.md').read_text()
    params = timm_kan.count_parameters(model)['total'] / 1e6
    for text in (name, 'Chebyshev KAN' if name.startswith('cheby') else 'B-spline KAN', f'{params:.2f}', 'GFLOPs',
                 'top1: 91.5', 'flowers-5', 'seed fine-tune', 'import timm_kan',
                 'timm.create_model("hf-hub:org/kan-model", pretrained=True)'):
        assert text in card, text


@pytest.mark.parametrize('name', list(FAMILIES))
def test_local_dir_round_trip_is_bit_exact_with_class_names(tmp_path, name):
    model = _model(name)
    out = export_for_hub(model, tmp_path / 'export', label_names=['cat', 'dog', 'eel'])
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert loaded.kan_args == model.kan_args
    assert list(loaded.pretrained_cfg['label_names']) == ['cat', 'dog', 'eel']
    assert list(loaded.state_dict()) == list(model.state_dict())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))


def _train_py_checkpoint(tmp_path, name):
    raw, ema = _model(name, seed=1), _model(name, seed=2)
    path = tmp_path / 'last.pth.tar'
    torch.save({'epoch': 9, 'arch': name, 'state_dict': raw.state_dict(), 'state_dict_ema': ema.state_dict(),
                'args': argparse.Namespace(model=name, model_kwargs=dict(SMALL, **FAMILIES[name]))}, path)
    return path, raw, ema


@pytest.mark.parametrize('no_ema', [False, True])
def test_push_cli_takes_train_py_checkpoints_and_prefers_ema(tmp_path, no_ema):
    path, raw, ema = _train_py_checkpoint(tmp_path, 'chebykan_vit_t16')
    class_map = tmp_path / 'class_indices.json'
    class_map.write_text(json.dumps({'0': 'daisy', '1': 'rose', '2': 'tulip'}))
    out = tmp_path / 'export'
    args = [str(path), '--model', 'chebykan_vit_t16', '--repo-id', 'org/flowers', '--class-map', str(class_map),
            '--export-only', str(out)] + (['--no-ema'] if no_ema else [])
    assert cli_main(['push'] + args) == 0
    saved = load_file(str(out / 'model.safetensors'))
    expected = (raw if no_ema else ema).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in expected.items())
    assert json.loads((out / 'config.json').read_text())['label_names'] == ['daisy', 'rose', 'tulip']


def test_push_uploads_the_exported_folder(tmp_path, hub):
    model = _model('kan_vit_t16')
    push_to_hub(model, 'org/kan-vit-tiny', token='hf_test_token', label_names=['a', 'b', 'c'], metrics={'top1': 88.0})
    assert hub.created == [{'name': 'kan-vit-tiny', 'organization': 'org', 'visibility': 'public'}]
    assert [h['repo_id'] for h in hub.commit_headers] == ['org/kan-vit-tiny']
    uploaded = hub.commits[0]
    reference = export_for_hub(model, tmp_path / 'ref', repo_id='org/kan-vit-tiny', label_names=['a', 'b', 'c'],
                               metrics={'top1': 88.0})
    assert sorted(uploaded) == sorted(p.name for p in reference.iterdir())
    for fname, content in uploaded.items():
        assert content == (reference / fname).read_bytes(), fname


def test_push_cli_uploads(tmp_path, hub):
    path, _, ema = _train_py_checkpoint(tmp_path, 'kan_vit_t16')
    assert cli_main(['push', str(path), '--model', 'kan_vit_t16', '--repo-id', 'org/n', '--token', 'hf_x',
                     '--private']) == 0
    assert hub.created[0]['visibility'] == 'private'
    (tmp_path / 'model.safetensors').write_bytes(hub.commits[0]['model.safetensors'])
    saved = load_file(str(tmp_path / 'model.safetensors'))
    assert all(torch.equal(saved[k], v) for k, v in ema.state_dict().items())


def test_bad_input_is_refused_before_any_upload(tmp_path, hub, monkeypatch, capsys):
    model = _model('chebykan_vit_t16')
    with pytest.raises(ValueError, match=r"repo_id must look like ORG/NAME.*'no-slash'"):
        push_to_hub(model, 'no-slash', token='t')
    with pytest.raises(ValueError, match='class map has 2 names but the model head has 3 classes'):
        push_to_hub(model, 'org/n', token='t', label_names=['a', 'b'])
    monkeypatch.delenv('HF_TOKEN', raising=False)
    monkeypatch.setattr(hf_constants, 'HF_TOKEN_PATH', str(tmp_path / 'no-token'))
    monkeypatch.setattr(hf_constants, 'HF_STORED_TOKENS_PATH', str(tmp_path / 'no-tokens'))
    with pytest.raises(RuntimeError, match='no Hugging Face token'):
        push_to_hub(model, 'org/n')
    path, _, _ = _train_py_checkpoint(tmp_path, 'chebykan_vit_t16')
    assert cli_main(['push', str(path), '--model', 'kan_vit_t16', '--repo-id', 'org/n', '--token', 't']) == 2
    assert "option 'degree' belongs to the chebykan_vit_* family" in capsys.readouterr().err
    assert cli_main(['push', str(path), '--model', 'chebykan_vit_t16', '--repo-id', 'org/n', '--token', 't',
                     '--model-kwargs', 'degree=3']) == 2
    err = capsys.readouterr().err
    assert 'does not match chebykan_vit_t16' in err and 'model (768, 192, 4), checkpoint (768, 192, 5)' in err
    assert hub.requests == []


def test_loading_without_import_explains(tmp_path):
    import subprocess
    import sys
    out = export_for_hub(_model('chebykan_vit_t16'), tmp_path / 'export')
    code = f"import timm; timm.create_model('local-dir:{out}', pretrained=True)"
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode != 0
    assert 'Unknown model (chebykan_vit_t16)' in result.stderr


def test_push_rebuilds_a_model_trained_from_a_pretrained_vit(tmp_path):
    """timm train.py records load-time options (kan_init='mlp', freeze) in args.model_kwargs: the
    rebuilt model has the architecture they imply and loads no pretrained weights."""
    torch.manual_seed(0)
    trained = timm.create_model('kan_vit_t16', num_classes=3, kan_base='mlp', kan_mid_norm=False, **SMALL)
    path = tmp_path / 'last.pth.tar'
    torch.save({'state_dict': trained.state_dict(), 'arch': 'kan_vit_t16', 'args': argparse.Namespace(
        model='kan_vit_t16', model_kwargs=dict(SMALL, kan_init='mlp', freeze='backbone'))}, path)
    out = tmp_path / 'export'
    assert cli_main(['push', str(path), '--model', 'kan_vit_t16', '--repo-id', 'org/n', '--export-only', str(out)]) == 0
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True)
    assert loaded.kan_args['kan_base'] == 'mlp' and loaded.kan_args['kan_mid_norm'] is False
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trained.state_dict().items())

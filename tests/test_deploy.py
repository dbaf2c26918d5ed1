"""The roads out of the package: `timm-kan export` (ONNX, torch.export), transformers on an export, and timm's
own scripts through `timm-kan timm`."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_kan
from timm_kan.cli import main as cli_main
from timm_kan.layers import KAN_FAMILIES

from conftest import image_folder

TINY = dict(img_size=32, patch_size=8, depth=2, num_classes=3)
TINY_ARGS = ['--model-kwargs', 'img_size=32', 'patch_size=8', 'depth=2', 'num_classes=3']
PREFIXES = [f.prefix for f in KAN_FAMILIES.values()]


def _checkpoint(tmp_path: Path, name: str) -> Path:
    torch.manual_seed(0)
    model = timm.create_model(name, **TINY)
    path = tmp_path / f'{name}.pth.tar'
    torch.save(dict(state_dict=model.state_dict(), arch=name, model_args=TINY), path)
    return path


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error:')]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize('fmt', ['onnx', 'pt2'])
def test_export_writes_a_file_that_matches_pytorch(tmp_path, capsys, fmt):
    source = _checkpoint(tmp_path, 'chebykan_vit_t16')
    out = tmp_path / f'model.{fmt}'
    assert cli_main(['export', str(source), '--format', fmt, '--out', str(out)]) == 0
    assert 'matches PyTorch' in capsys.readouterr().out and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [source.name, out.name])  # one self-contained file, no temporary left
    model = timm.create_model('chebykan_vit_t16', **TINY).eval()
    model.load_state_dict(torch.load(source, weights_only=True)['state_dict'])
    x = torch.randn(5, 3, 32, 32)  # a batch size the check did not use
    if fmt == 'pt2':
        got = torch.export.load(str(out)).module()(x)
    else:
        import onnxruntime
        got = torch.from_numpy(onnxruntime.InferenceSession(str(out)).run(None, {'images': x.numpy()})[0])
    torch.testing.assert_close(got, model(x).detach(), atol=1e-4, rtol=1e-4)


def test_export_of_a_registry_name_and_its_errors(tmp_path, capsys):
    out = tmp_path / 'vit.pt2'
    assert cli_main(['export', 'vit_tiny_patch16_224', '--format', 'pt2', '--out', str(out), *TINY_ARGS]) == 0
    before = out.stat().st_mtime_ns
    assert cli_main(['export', 'vit_tiny_patch16_224', '--format', 'pt2', '--out', str(out), *TINY_ARGS]) == 2
    assert 'exists: pass --overwrite' in _one_error_line(capsys) and out.stat().st_mtime_ns == before
    with pytest.raises(SystemExit) as exited:  # argparse's own exit, its message one line
        cli_main(['export', 'vit_tiny_patch16_224', '--format', 'tflite', '--out', str(out)])
    assert exited.value.code == 2 and "invalid choice: 'tflite'" in _one_error_line(capsys)
    missing = tmp_path / 'no' / 'such' / 'model.onnx'
    assert cli_main(['export', 'vit_tiny_patch16_224', '--format', 'onnx', '--out', str(missing)]) == 2
    assert f'folder {missing.parent} does not exist' in _one_error_line(capsys)
    assert cli_main(['export', 'vit_tiny_patch16_224', '--format', 'onnx', '--out', str(tmp_path)]) == 2
    assert 'is a folder' in _one_error_line(capsys)


def test_export_checks_on_the_images_given(tmp_path, capsys):
    images = image_folder(tmp_path / 'img', classes=('a',), count=3, size=40)
    paths = [str(p) for p in sorted((images / 'a').iterdir())]
    out = tmp_path / 'm.pt2'
    assert cli_main(['export', 'grkan_vit_t16', '--format', 'pt2', '--out', str(out), '--images', *paths,
                     *TINY_ARGS]) == 0
    assert cli_main(['export', 'grkan_vit_t16', '--format', 'pt2', '--out', str(out), '--overwrite',
                     '--images', paths[0], *TINY_ARGS]) == 2
    assert 'at least 2 images' in _one_error_line(capsys)


@pytest.mark.parametrize('prefix', PREFIXES)
def test_transformers_loads_an_export(tmp_path, prefix):
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    model = timm.create_model(f'{prefix}_t16', **TINY).eval()
    out = timm_kan.export_for_hub(model, tmp_path / 'export', label_names=['cat', 'dog', 'owl'])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        # the same weights and code: equal to float rounding (the kernels' reduction order may follow global state)
        auto = transformers.AutoModelForImageClassification.from_pretrained(str(out)).eval()
        torch.testing.assert_close(auto(pixel_values=x).logits, expected, atol=1e-6, rtol=1e-6)
        features = transformers.TimmWrapperModel.from_pretrained(str(out)).eval()
        torch.testing.assert_close(features(pixel_values=x).pooler_output,
                                   model.forward_head(model.forward_features(x), pre_logits=True), atol=1e-6, rtol=1e-6)
    assert 'AutoModelForImageClassification.from_pretrained' in (out / 'README.md').read_text()  # the card says how
    # timm's own round trip keeps the head that config.json records at its top level
    back = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert back.num_classes == 3 and torch.equal(back(x), expected)


def test_transformers_pipeline_names_the_classes(tmp_path):
    transformers = pytest.importorskip('transformers')
    model = timm.create_model('chebykan_vit_t16', **TINY).eval()
    out = timm_kan.export_for_hub(model, tmp_path / 'export', label_names=['cat', 'dog', 'owl'])
    pipe = transformers.pipeline('image-classification', model=str(out))
    image = Image.fromarray((np.random.RandomState(0).rand(40, 40, 3) * 255).astype(np.uint8))
    predictions = pipe(image)
    assert {p['label'] for p in predictions} == {'cat', 'dog', 'owl'}
    assert sum(p['score'] for p in predictions) == pytest.approx(1.0, abs=1e-5)


STAND_IN = '''"""What timm's validate.py does first: parse --model, create it, exit with a status."""
import argparse
import sys

import timm

parser = argparse.ArgumentParser()
parser.add_argument('--model')
parser.add_argument('--exit', type=int, default=0)
args = parser.parse_args()
model = timm.create_model(args.model, img_size=32, patch_size=8, depth=2, num_classes=3)
print(f'{__name__} {sys.argv[0]} {type(model).__name__} {model.num_classes}')
sys.exit(args.exit)
'''


def test_timm_scripts_run_with_the_models_registered(tmp_path, capsys):
    script = tmp_path / 'validate.py'
    script.write_text(STAND_IN)
    assert cli_main(['timm', str(script), '--model', 'chebykan_vit_t16']) == 0
    assert f'__main__ {script} KANVisionTransformer 3' in capsys.readouterr().out
    assert cli_main(['timm', str(script), '--model', 'grkan_vit_t16', '--exit', '3']) == 3
    assert sys.argv[0] != str(script)  # the caller's command line is back
    assert cli_main(['timm', str(tmp_path / 'inference.py')]) == 2
    assert 'timm script not found' in _one_error_line(capsys)


@pytest.mark.skipif(not os.environ.get('TIMM_SCRIPTS'), reason='TIMM_SCRIPTS: a folder with timm checkout scripts')
def test_timm_validate_py_on_a_checkpoint(tmp_path, capsys):
    """timm's real validate.py (not in its wheel) on a KAN-ViT training checkpoint: TIMM_SCRIPTS=PATH pytest ..."""
    data = image_folder(tmp_path / 'data', classes=('a', 'b', 'c'), count=4, size=32)
    checkpoint = _checkpoint(tmp_path, 'grkan_vit_t16')
    code = cli_main(['timm', str(Path(os.environ['TIMM_SCRIPTS']) / 'validate.py'), '--data-dir', str(data),
                     '--model', 'grkan_vit_t16', '--checkpoint', str(checkpoint), '--num-classes', '3',
                     '--img-size', '32', '--model-kwargs', 'img_size=32', 'patch_size=8', 'depth=2', '-b', '4',
                     '--workers', '0', '--device', 'cpu'])
    assert code == 0 and '"top1"' in capsys.readouterr().out

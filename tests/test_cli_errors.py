"""Every bad input to every command is one line on stderr naming the option or file, and exit status 2.

Each case is a real mistake (a typo in --model-kwargs, a ratio out of range, a class map of the wrong shape, a
file that is not a checkpoint); before, many printed argparse's usage block or a traceback.
"""
import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from timm_kan import cli
from timm_kan.cli import main as cli_main
from timm_kan.hub import class_names

from conftest import SMALL


def _run(argv: List[str]) -> int:
    """Exit status of the command, whether it returns one or argparse exits."""
    try:
        return cli_main(argv)
    except SystemExit as e:
        return e.code


def _one_line_error(capsys, argv: List[str], code: int = 2) -> str:
    assert _run(argv) == code
    err = capsys.readouterr().err
    assert 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> Path:
    """A 3-class KAN-ViT checkpoint, an image, broken checkpoints and class maps of the wrong shape."""
    root = tmp_path_factory.mktemp('inputs')
    torch.manual_seed(0)
    kan = timm.create_model('chebykan_vit_t16', num_classes=3, **SMALL)
    torch.save(dict(state_dict=kan.state_dict(), arch='chebykan_vit_t16', model_args=dict(SMALL)), root / 'ok.pth')
    Image.new('RGB', (32, 32)).save(root / 'x.png')
    (root / 'random.pth').write_bytes(np.random.RandomState(0).bytes(4096))
    torch.save([1, 2, 3], root / 'list.pth')
    maps = {'number': 3, 'lists': [['a'], ['b'], ['c']], 'duplicates': ['a', 'b', 'a'],
            'hex_key': {'0': 'a', '0x': 'b', '1': 'c'}, 'same_index': {'0': 'a', '00': 'b', '1': 'c'},
            'gap': {'0': 'a', '1': 'b', '3': 'c'}, 'dup_values': {'0': 'a', '1': 'a', '2': 'b'}}
    for name, content in maps.items():
        (root / f'{name}.json').write_text(json.dumps(content))
    (root / 'not_json.json').write_text('{"0": ')
    return root


MALFORMED_KWARGS = ['--model-kwargs', 'img_size=32', 'foo']


@pytest.mark.parametrize('argv', [
    ['info', 'vit_tiny_patch16_224', *MALFORMED_KWARGS],
    ['predict', '--model', 'vit_tiny_patch16_224', 'x.png', *MALFORMED_KWARGS],
    ['push', 'ckpt.pth', '--model', 'vit_tiny_patch16_224', '--repo-id', 'org/n', *MALFORMED_KWARGS],
    ['compare', *MALFORMED_KWARGS],
    ['explain', 'ckpt.pth', '--data', 'digits', '--out', 'o', *MALFORMED_KWARGS],
    ['convert', '--model', 'kan_vit_t16', '--checkpoint', 'c.pth', '--out', 'o', *MALFORMED_KWARGS],
    ['bench', *MALFORMED_KWARGS],
    ['info', 'vit_tiny_patch16_224', '--model-kwargs', '=3'],
], ids=lambda a: a[0] if a[0] != 'info' or 'foo' in a else 'info-empty-key')
def test_malformed_model_kwargs(capsys, argv):
    err = _one_line_error(capsys, argv)
    assert '--model-kwargs' in err and ('foo' in err or "'=3'" in err), err


def test_model_kwargs_values_parse_as_timm_does():
    args = cli.build_parser().parse_args(['info', 'm', '--model-kwargs', 'a=3', 'b=1.5', 'c=(1, 2)', 'd=xyz',
                                          'e=True', 'f=a=b', 'g=', "h='q'", ''])
    assert args.model_kwargs == dict(a=3, b=1.5, c=(1, 2), d='xyz', e=True, f='a=b', g='', h='q')


EXPLAIN = ['explain', 'ckpt.pth', '--data', 'digits', '--out', 'o']


@pytest.mark.parametrize('argv,option', [
    (EXPLAIN + ['--top-k', '0'], '--top-k'),
    (EXPLAIN + ['--images', '0'], '--images'),
    (EXPLAIN + ['--block', '-5'], '--block'),
    (EXPLAIN + ['--prune', '1.5'], '--prune'),
    (EXPLAIN + ['--prune', 'nan'], '--prune'),
    (EXPLAIN + ['--prune', '0'], '--prune'),
    (EXPLAIN + ['--eval-images', '0'], '--eval-images'),
    (EXPLAIN + ['--finetune-epochs', '-1'], '--finetune-epochs'),
    (EXPLAIN + ['--finetune-images', 'inf'], '--finetune-images'),
    (EXPLAIN + ['--layer', '3'], '--layer'),
    (['predict', '--model', 'vit_tiny_patch16_224', '--top-k', '0', 'x.png'], '--top-k'),
    (['split', 'src', 'dst', '--val-ratio', '2'], '--val-ratio'),
    (['split', 'src', 'dst', '--val-ratio', 'nan'], '--val-ratio'),
    (['split', 'src', 'dst', '--val-ratio', '0'], '--val-ratio'),
    (['split', 'src', 'dst', '--seed', '-1'], '--seed'),
    (['push', 'c.pth', '--model', 'm', '--repo-id', 'o/n', '--timeout', '0'], '--timeout'),
    (['push', 'c.pth', '--model', 'm', '--repo-id', 'o/n', '--timeout', 'inf'], '--timeout'),
    (['push', 'c.pth', '--model', 'm', '--repo-id', 'o/n', '--num-classes', '0'], '--num-classes'),
    (['bench', '--reps', '0'], '--reps'),
    (['bench', '--tokens', 'many'], '--tokens'),
    (['bench', '--warmup', '-1'], '--warmup'),
    (['bench', '--dtype', 'int3'], '--dtype'),
    (['compare', '--lr', 'x'], '--lr'),
    (['models', '--results', 'no-equals-sign'], '--results'),
])
def test_bad_option_values(capsys, argv, option):
    err = _one_line_error(capsys, argv)
    assert err.startswith('error: timm-kan ') and option in err, err


@pytest.mark.parametrize('argv,message', [
    (['frobnicate'], "invalid choice: 'frobnicate'"),
    ([], 'the following arguments are required: command'),
    (['info', 'vit_tiny_patch16_224', '--frob'], 'unrecognized arguments: --frob'),
    (['split', 'src'], 'the following arguments are required: dst'),
    (['info', 'no_such_model_xyz'], "unknown model 'no_such_model_xyz'"),
])
def test_unknown_commands_options_and_models(capsys, argv, message):
    assert message in _one_line_error(capsys, argv)


def test_help_still_works(capsys):
    assert _run(['--help']) == 0 and 'usage: timm-kan' in capsys.readouterr().out
    assert _run(['explain', '--help']) == 0 and '--prune KEEP' in capsys.readouterr().out
    assert _run(['bench', '--help']) == 0 and 'usage: timm-kan bench' in capsys.readouterr().out


@pytest.mark.parametrize('class_map,message', [
    ('number', 'expected a JSON list or object of class names, got int'),
    ('lists', 'class names must be strings'),
    ('duplicates', "duplicate class name 'a'"),
    ('hex_key', "class map keys must be class indices 0..N-1, got '0x'"),
    ('same_index', "class map keys must be class indices 0..N-1, got '00'"),
    ('gap', 'class indices must be 0..2, got [0, 1, 3]'),
    ('dup_values', "duplicate class name 'a'"),
    ('not_json', 'is not JSON'),
])
def test_predict_class_map_of_the_wrong_shape(capsys, files, class_map, message):
    path = files / f'{class_map}.json'
    err = _one_line_error(capsys, ['predict', '--model', 'chebykan_vit_t16', '--checkpoint', str(files / 'ok.pth'),
                                   '--class-map', str(path), str(files / 'x.png')])
    assert str(path) in err and message in err, err


def test_class_names_keep_their_return_values_and_refuse_a_twice_given_index():
    assert class_names({'1': 'rose', '0': 'daisy'}) == ['daisy', 'rose'] == class_names(('daisy', 'rose'))
    assert class_names({0: 'daisy', 1: 'rose'}, 'ckpt.pth') == ['daisy', 'rose']
    with pytest.raises(ValueError, match='ckpt.pth: class index 0 appears twice'):
        class_names({0: 'daisy', '0': 'rose', 1: 'tulip'}, 'ckpt.pth')  # a checkpoint may mix int and str keys


@pytest.mark.parametrize('checkpoint', ['random.pth', 'list.pth', 'missing.pth'])
def test_push_checkpoint_that_is_not_one(capsys, files, tmp_path, checkpoint):
    out = tmp_path / 'export'
    err = _one_line_error(capsys, ['push', str(files / checkpoint), '--model', 'chebykan_vit_t16', '--repo-id',
                                   'org/n', '--export-only', str(out)])
    assert str(files / checkpoint) in err and not out.exists(), err


def test_push_metrics_must_be_an_object(capsys, files, tmp_path):
    err = _one_line_error(capsys, ['push', str(files / 'ok.pth'), '--model', 'chebykan_vit_t16', '--repo-id', 'org/n',
                                   '--metrics', '[1]', '--export-only', str(tmp_path / 'export')])
    assert '--metrics must be a JSON object' in err


def test_split_of_a_missing_folder(capsys, tmp_path):
    err = _one_line_error(capsys, ['split', str(tmp_path / 'nope'), str(tmp_path / 'out')])
    assert str(tmp_path / 'nope') in err


def test_interrupt_is_one_line_and_status_130(capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, '_cmd_info', interrupted)
    assert _run(['info', 'vit_tiny_patch16_224']) == 130
    assert capsys.readouterr().err == 'interrupted\n'


def test_unexpected_exception_is_one_line_and_verbose_shows_it(capsys, monkeypatch):
    def broken(args):
        raise KeyError('num_classes')

    monkeypatch.setattr(cli, '_cmd_info', broken)
    err = _one_line_error(capsys, ['info', 'vit_tiny_patch16_224'])
    assert err == "error: KeyError: 'num_classes' (run with -v for the traceback)"
    with pytest.raises(KeyError):
        cli_main(['-v', 'info', 'vit_tiny_patch16_224'])


def test_multi_line_error_message_is_joined(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError('first line\n\n  second line\n')

    monkeypatch.setattr(cli, '_cmd_info', broken)
    assert _one_line_error(capsys, ['info', 'vit_tiny_patch16_224']) == 'error: first line second line'

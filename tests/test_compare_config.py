"""One declaration of each compare option: the CLI's flags come from ``CompareConfig``, the CLI and the Python API
decide the same defaults, ``--data`` is parsed once, and KAN families are read when needed."""
import argparse
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

from timm_kan.cli import build_parser
from timm_kan.cli import main as cli_main
from timm_kan.comparison.config import CompareConfig, cli_flag, config_from_args
from timm_kan.comparison.run import kwargs_per_model
from timm_kan.data.sources import DATA_SOURCES, DataSpec, data_inputs
from timm_kan.layers import KAN_FAMILIES


def _compare_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices['compare']


def _from_cli(*argv: str) -> CompareConfig:
    return config_from_args(build_parser().parse_args(['compare', *argv]))


def test_every_compare_flag_comes_from_one_config_field():
    flags = {a.option_strings[0]: a.dest for a in _compare_parser()._actions if a.dest != 'help'}
    assert flags == {cli_flag(f): f.name for f in fields(CompareConfig) if 'cli' in f.metadata}
    assert len(flags) == len(fields(CompareConfig))


@pytest.mark.parametrize('data,extra,expected', [
    ('digits', [], ('small', True)),
    ('fashion-mnist:/nowhere', [], ('small', True)),
    ('digits', ['--pretrained'], ('small', False)),
    ('digits', ['--pretrained-file', 'vit.pth'], ('small', False)),
    ('FOLDER', [], ('seed', False)),
    ('FOLDER', ['--match-params', '--recipe', 'small'], ('small', True)),
])
def test_cli_and_python_api_decide_the_same_defaults(tmp_path, data, extra, expected):
    data = str(tmp_path) if data == 'FOLDER' else data
    api_kwargs = dict(pretrained='--pretrained' in extra, match_params=True if '--match-params' in extra else None,
                      recipe='small' if '--recipe' in extra else None,
                      pretrained_file='vit.pth' if '--pretrained-file' in extra else None)
    cli, api = _from_cli('--data', data, *extra), CompareConfig(data=data, **api_kwargs)
    assert cli == api
    for cfg in (cli, api):
        decided = cfg.with_defaults()
        assert (decided.recipe, decided.match_params) == expected
    assert cli.resolved() == api.resolved()


def test_cli_and_python_api_defaults_are_equal():
    assert _from_cli() == CompareConfig()
    assert _from_cli('--seed', '3', '--seeds', '2').run_seeds() == CompareConfig(seed=3, seeds=[3, 4]).run_seeds()


@pytest.mark.parametrize('text,kind,name,inputs', [
    ('mnist5k', 'bundled', 'mnist5k', []),
    ('fashion-mnist', 'bundled', 'fashion-mnist', [DATA_SOURCES['fashion-mnist'].folder]),
    ('fashion-mnist:/idx', 'bundled', 'fashion-mnist', [Path('/idx')]),
    ('mnist5k:/x', 'folder', 'folder', [Path('mnist5k:/x')]),
    ('/images', 'folder', 'folder', [Path('/images')]),
])
def test_data_is_parsed_once_into_a_spec(text, kind, name, inputs):
    spec = DataSpec.parse(text)
    assert (spec.kind, spec.name, str(spec)) == (kind, name, text)
    assert data_inputs(spec) == data_inputs(text) == inputs
    assert CompareConfig(data=text).data == spec == DataSpec.of(spec)


def test_a_family_registered_later_is_known_to_compare_and_convert(monkeypatch, capsys):
    toy = SimpleNamespace(prefix='toykan_vit', any_model='toykan', options=('toy_order',))
    monkeypatch.setitem(KAN_FAMILIES, 'toy', toy)
    with pytest.raises(ValueError, match='toy_order: none of the models takes it .* families that do: toykan_vit_'):
        kwargs_per_model(['vit_tiny_patch16_224'], dict(toy_order=2))
    assert cli_main(['convert', '--model', 'vit_tiny_patch16_224', '--checkpoint', 'c.pth', '--out', 'o']) == 2
    err = capsys.readouterr().err
    assert 'grkan_vit_*, ' in err and ' or toykan_vit_* models' in err  # the family registered last, listed last

"""The benchmark runs on CPU with small shapes and reports every variant with ratios to the MLP."""
import json
import os
import subprocess
import sys

import pytest
import torch

from timm_kan.bench import PublishedChebyshevKAN, check_targets, main
from timm_kan.layers import chebyshev_basis


def test_bench_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / 'bench.json'
    result = main(['--tokens', '64', '--dim', '16', '--hidden', '32', '--reps', '1', '--warmup', '0',
                   '--models', 'vit_tiny_patch16_224', 'chebykan_vit_t16', '--path-models', 'chebykan_vit_t16',
                   '--img-size', '32', '--batch-size', '2', '--steps', '1',
                   '--model-kwargs', 'depth=1', 'embed_dim=16', 'num_heads=2', '--json', str(out)])
    assert os.getcwd() == str(tmp_path)  # importing the peer package ikan changes it; the bench puts it back
    saved = json.loads(out.read_text())
    assert saved['ffn'] == json.loads(json.dumps(result['ffn']))
    assert saved['command'].startswith('timm-kan bench --tokens 64') and saved['ikan'] == '1.3.0'
    variants = [r['variant'] for r in saved['ffn']]
    assert variants[0] == 'mlp' and saved['ffn'][0]['fwd_bwd_vs_mlp'] == 1.0
    assert {'chebyshev published (acos+einsum)', 'chebyshev reference', 'bspline reference',
            'ikan chebyshev (peer)', 'ikan efficient-KAN (peer)'} <= set(variants)
    assert all(r['forward_ms'] > 0 and r['fwd_bwd_ms'] > 0 and r['note'] == '' for r in saved['ffn'])
    assert [r['model'] for r in saved['training']] == ['vit_tiny_patch16_224', 'chebykan_vit_t16']
    assert saved['training'][0]['vs_vit'] == 1.0 and saved['training'][1]['images_per_second'] > 0
    (path_row,) = saved['paths']
    assert path_row['model'] == 'chebykan_vit_t16' and path_row['reference_images_per_second'] > 0
    assert path_row['fused_vs_reference'] == pytest.approx(
        path_row['fused_images_per_second'] / path_row['reference_images_per_second'])
    text = capsys.readouterr().out
    assert text.startswith(f"Measured {saved['date']} on cpu with torch ")
    assert '| variant | forward_ms | fwd_bwd_ms |' in text and '| model | batch_size | images_per_second |' in text
    assert '| target | goal | measured | met |' in text


def test_timm_kan_bench_command_takes_the_bench_options(capsys):
    from timm_kan.cli import main as cli_main
    assert cli_main(['bench', '--tokens', '16', '--dim', '8', '--hidden', '16', '--reps', '1', '--warmup', '0',
                     '--variants', 'bspline reference']) == 0
    out = capsys.readouterr().out
    assert 'FFN 8->16->8 on 16 tokens' in out and '| bspline reference |' in out and '| rbf reference |' not in out
    assert cli_main(['bench', '--variants', 'chebyshev fast']) == 2
    assert "unknown FFN variants ['chebyshev fast']" in capsys.readouterr().err


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match=r"unknown FFN variants \['chebyshev fast'\]; available here: .*'mlp'"):
        main(['--tokens', '8', '--dim', '8', '--hidden', '8', '--variants', 'chebyshev fast'])


def test_targets_are_checked_against_the_issue_bounds():
    result = {
        'ffn': [{'variant': 'mlp', 'fwd_bwd_vs_mlp': 1.0, 'memory_vs_mlp': 1.0},
                {'variant': 'chebyshev fused', 'fwd_bwd_vs_mlp': 1.55, 'memory_vs_mlp': 1.3},
                {'variant': 'bspline fused', 'fwd_bwd_vs_mlp': None, 'memory_vs_mlp': None}],
        'training': [{'model': 'vit_base_patch16_224', 'vs_vit': 1.0},
                     {'model': 'chebykan_vit_base_patch16_224', 'vs_vit': 0.31},
                     {'model': 'kan_vit_base_patch16_224', 'vs_vit': None}],
        'paths': [{'model': 'grkan_vit_tiny_patch16_224', 'fused_vs_reference': 0.97}],
    }
    got = {r['target']: (r['goal'], r['measured'], r['met']) for r in check_targets(result)}
    assert got == {
        'Chebyshev FFN fwd+bwd time vs MLP': ('<= 1.6', 1.55, True),
        'Chebyshev FFN extra memory vs MLP': ('<= 1.2', 1.3, False),
        'B-spline FFN fwd+bwd time vs MLP': ('<= 8', None, False),  # out of memory: missed
        'B-spline FFN extra memory vs MLP': ('<= 2', None, False),
        'chebykan_vit_base_patch16_224 training images/s vs ViT-B': ('>= 0.3', 0.31, True),
        'kan_vit_base_patch16_224 training images/s vs ViT-B (fits at batch 64)': ('>= 0.12', None, False),
        'grkan_vit_tiny_patch16_224 fused vs reference path images/s': ('>= 1', 0.97, False),
    }


def test_out_of_memory_is_a_row_not_a_crash(monkeypatch):
    from timm_kan import bench, bench_models

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError('CUDA out of memory')

    monkeypatch.setattr(bench_models, 'time_call', boom)
    rows = bench.bench_training(['vit_tiny_patch16_224'], batch_size=2, img_size=32)
    assert rows == [dict(model='vit_tiny_patch16_224', batch_size=2, images_per_second=None, note='out of memory',
                         vs_vit=None)]


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, '-m', 'timm_kan.bench', '--tokens', '32', '--dim', '8', '--hidden', '16',
                             '--reps', '1', '--warmup', '0'], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '| mlp |' in result.stdout


def test_published_baseline_computes_the_same_function():
    torch.manual_seed(0)
    layer = PublishedChebyshevKAN(5, 3, degree=4).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    expected = torch.einsum('nik,iok->no', chebyshev_basis(x, 4), layer.coeffs)
    torch.testing.assert_close(layer(x), expected)


def test_mission_table_takes_gpu_ratios_from_a_bench_file(tmp_path):
    from timm_kan.tables import mission_table
    bench = tmp_path / 'bench.json'
    bench.write_text(json.dumps({'ffn': [{'variant': 'chebyshev fused', 'fwd_bwd_vs_mlp': 1.55},
                                         {'variant': 'bspline fused', 'fwd_bwd_vs_mlp': 7.9}]}))
    table = mission_table(bench_results=bench)
    assert '| `chebykan_vit_*` | Chebyshev KAN, degree 3 | 2.96x | 2.27x | 1.55x |' in table
    assert '| `kan_vit_*` | B-spline KAN, grid 5, order 3 | 6.89x | 6.08x | 7.90x |' in table
    assert '| `grkan_vit_*` | group-rational KAN, 8 groups | 1.00x | 1.00x | not measured yet |' in table


def test_compiled_rows_have_the_compiled_mlp_as_reference():
    from timm_kan.bench import bench_ffn

    rows = bench_ffn(32, 8, 16, dtype='float32', device='cpu', warmup=1, reps=1, only=['mlp'], compiled=True)
    assert [r['variant'] for r in rows] == ['mlp', 'mlp compiled']
    assert all(r['fwd_bwd_ms'] > 0 and r['fwd_bwd_vs_mlp'] > 0 for r in rows) and rows[0]['fwd_bwd_vs_mlp'] == 1.0


def test_ratios_come_from_pairs_timed_in_turns(monkeypatch):
    """A load that comes and goes slows a variant and the MLP timed next to it alike: the ratio is the median of the
    pairs' ratios (10 here), not the ratio of the medians."""
    from timm_kan import bench_models

    clock = iter([40.0, 4.0, 10.0, 1.0, 30.0, 3.0])  # variant, MLP, variant, MLP, ... under three loads
    calls = []
    monkeypatch.setattr(bench_models, 'time_call', lambda fn, *args: calls.append(fn) or next(clock))
    ms, ratio = bench_models.time_paired('variant', 'mlp', torch.device('cpu'), 0, 3)
    assert (ms, ratio) == (30.0, 10.0) and calls == ['variant', 'mlp'] * 3

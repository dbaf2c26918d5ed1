"""The benchmark runs on CPU with small shapes and reports every variant with ratios to the MLP."""
import json
import subprocess
import sys

import torch

from timm_kan.bench import PublishedChebyshevKAN, main
from timm_kan.layers import chebyshev_basis


def test_bench_table_and_json(tmp_path, capsys):
    out = tmp_path / 'bench.json'
    result = main(['--tokens', '64', '--dim', '16', '--hidden', '32', '--reps', '1', '--warmup', '0',
                   '--models', 'vit_tiny_patch16_224', 'chebykan_vit_t16', '--img-size', '32', '--batch-size', '2',
                   '--json', str(out)])
    saved = json.loads(out.read_text())
    assert saved['ffn'] == json.loads(json.dumps(result['ffn']))
    variants = [r['variant'] for r in saved['ffn']]
    assert variants[0] == 'mlp' and saved['ffn'][0]['fwd_bwd_vs_mlp'] == 1.0
    assert {'chebyshev published (acos+einsum)', 'chebyshev reference', 'bspline reference'} <= set(variants)
    assert all(r['forward_ms'] > 0 and r['fwd_bwd_ms'] > 0 for r in saved['ffn'])
    assert [r['model'] for r in saved['training']] == ['vit_tiny_patch16_224', 'chebykan_vit_t16']
    assert saved['training'][0]['vs_first_mlp_model'] == 1.0
    text = capsys.readouterr().out
    assert '| variant | forward_ms | fwd_bwd_ms |' in text and '| model | batch_size |' in text


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
    assert '| `chebykan_vit_*` | Chebyshev KAN, degree 3 | 2.96x | 2.91x | 1.55x |' in table
    assert '| `kan_vit_*` | B-spline KAN, grid 5, order 3 | 6.89x | 6.08x | 7.90x |' in table
    assert '| `grkan_vit_*` | group-rational KAN, 8 groups | 1.00x | 1.00x | not measured yet |' in table

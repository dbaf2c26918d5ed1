"""``timm-kan compare --compile``: every model trains through torch.compile (inductor on CPU), and a compile that
cannot build is one line that keeps the results so far."""
import json

import torch

from timm_kan.cli import main as cli_main
from timm_kan.comparison import trainer

TINY = ['--model-kwargs', 'img_size=16', 'patch_size=8', 'embed_dim=16', 'depth=1', 'num_heads=2']


def _compare(out, *extra):
    return cli_main(['compare', '--data', 'digits', '--max-items', '80', '--epochs', '1', '--batch-size', '40',
                     '--output', str(out), '--no-explain', '--no-progress', *TINY, *extra])


def test_compare_trains_a_compiled_kan_vit_on_cpu(tmp_path, monkeypatch):
    compiled = []
    real = torch.compile
    monkeypatch.setattr(torch, 'compile', lambda model, **kw: compiled.append(type(model).__name__) or real(model))
    assert _compare(tmp_path / 'run', '--models', 'chebykan_vit_t16', '--compile') == 0
    saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
    assert compiled == ['KANVisionTransformer'] and saved['compile'] is True
    (result,) = saved['results']
    assert result['model'] == 'chebykan_vit_t16' and len(result['history']) == 1
    assert torch.isfinite(torch.tensor(result['history'][0]['train_loss']))


def test_a_compile_that_cannot_build_is_one_line_and_keeps_the_results(tmp_path, monkeypatch, capsys):
    import torch._dynamo.exc

    class Broken(torch.nn.Module):  # what torch.compile gives where inductor cannot build: a failing first call
        def forward(self, x):
            raise torch._dynamo.exc.BackendCompilerFailed(
                lambda: None, RuntimeError('InvalidCxxCompiler: No working C++ compiler found'), None)

    def broken(model, **kw):
        return Broken()

    monkeypatch.setattr(torch, 'compile', broken)
    out = tmp_path / 'run'
    assert _compare(out, '--models', 'vit_tiny_patch16_224', '--compile') != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert 'vit_tiny_patch16_224: --compile failed (BackendCompilerFailed' in err[-1]
    assert 'run without --compile' in err[-1] and 'No working C++ compiler' in err[-1]
    monkeypatch.setattr(torch, 'compile', lambda model, **kw: model)  # (never called: no --compile)
    assert trainer._compile_failure(torch._dynamo.exc.BackendCompilerFailed(lambda: None, RuntimeError('x'), None))
    assert not trainer._compile_failure(RuntimeError('a bug of the model'))
    assert _compare(out, '--models', 'vit_tiny_patch16_224', '--resume') == 0  # the run continues without it

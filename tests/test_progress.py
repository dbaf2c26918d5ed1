"""Long commands say they are alive when their output is not a terminal (nohup, CI logs): one plain line per
epoch or measured group on stderr, flushed, while stdout keeps only the results (a table users may pipe).

capsys' streams are not TTYs, so tqdm's bar is hidden here, as it is in a log file.
"""
import copy
import io
import json
import re
import sys
from dataclasses import replace

import pytest
import timm
import torch
from torch import nn

from conftest import image_folder as _folder
from timm_kan.cli import main as cli_main
from timm_kan.comparison.results import format_table

TINY_KWARGS = dict(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2)
TINY = ['--model-kwargs', *(f'{k}={v}' for k, v in TINY_KWARGS.items())]
NUMBER = r'(nan|inf|-?\d+(?:\.\d+)?)'
ELAPSED = r'\(elapsed (?:\d+ h \d\d min|\d+ min \d\d s|\d+ s)\)'
EPOCH_LINE = re.compile(
    rf'^(?P<model>\S+) seed (?P<seed>\d+) epoch (?P<epoch>\d+)/(?P<epochs>\d+): train loss (?P<train_loss>{NUMBER}), '
    rf'val loss (?P<val_loss>{NUMBER}), top-1 (?P<top1>{NUMBER}), (?P<seconds>{NUMBER}) s {ELAPSED}$')


def _progress_lines(err: str, pattern: re.Pattern):
    return [m for m in map(pattern.match, err.splitlines()) if m]


@pytest.mark.parametrize('no_progress', [True, False], ids=['no-progress', 'default'])
def test_compare_prints_one_line_per_epoch_per_model_to_stderr(tmp_path, capsys, no_progress):
    data, out = _folder(tmp_path / 'data'), tmp_path / 'out'
    models = ['vit_tiny_patch16_224', 'chebykan_vit_t16']
    argv = ['compare', '--data', str(data), '--output', str(out), '--recipe', 'small', '--batch-size', '8',
            '--epochs', '2', '--no-explain', '--models', *models, *TINY] + (['--no-progress'] if no_progress else [])
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    results = json.loads((out / 'results.json').read_text())['results']

    lines = _progress_lines(captured.err, EPOCH_LINE)
    assert len(lines) == 4, captured.err  # 2 models x 2 epochs, nothing else matches
    expected = [(r['model'], h) for r in results for h in r['history']]
    for m, (model, h) in zip(lines, expected):
        assert (m['model'], int(m['seed']), int(m['epoch']), int(m['epochs'])) == (model, 0, h['epoch'], 2)
        for key in ('train_loss', 'val_loss', 'top1'):
            assert float(m[key]) == pytest.approx(h[key], abs=0.01), (key, m.group(0), h)
        assert float(m['seconds']) == pytest.approx(h['epoch_seconds'], abs=0.1)
    # stdout is exactly the table and the outputs line: no progress in what users pipe
    assert captured.out == format_table(results) + '\n' + (
        f'\noutputs in {out}: results.json, results.csv, loss.png, accuracy.png, accuracy_vs_gflops.png, '
        'accuracy_vs_params.png\n')
    assert not any(EPOCH_LINE.match(line) for line in captured.out.splitlines())


def test_compare_progress_comes_from_rank_0_only(tmp_path, capsys):
    """Under DDP every process trains and only rank 0 speaks (a context of rank 1 in one process stands for it)."""
    from timm_kan.comparison.config import RECIPES
    from timm_kan.comparison.trainer import RunContext, train_model
    from timm_kan.data.sources import prepare_data

    root, classes = prepare_data(str(_folder(tmp_path / 'data')), tmp_path / 'out', 0.2, 0)
    ctx = RunContext(data_root=root, classes=classes, recipe=dict(RECIPES['small'], epochs=1, batch_size=8),
                     device=torch.device('cpu'), out_dir=tmp_path / 'out')
    kwargs = dict(TINY_KWARGS, num_classes=len(classes))
    for rank, expected in ((1, 0), (0, 1)):
        train_model('vit_tiny_patch16_224', kwargs, replace(ctx, rank=rank))
        assert len(_progress_lines(capsys.readouterr().err, EPOCH_LINE)) == expected, rank


FINETUNE_LINE = re.compile(
    rf'^fine-tune epoch (?P<epoch>\d+)/(?P<epochs>\d+): train loss (?P<loss>{NUMBER}), '
    rf'(?P<seconds>{NUMBER}) s {ELAPSED}$')


def test_finetune_prints_one_line_per_epoch_with_its_mean_loss(capsys):
    from timm_kan.explain.run import finetune

    torch.manual_seed(0)
    model = timm.create_model('chebykan_vit_t16', num_classes=2, **TINY_KWARGS)
    images, labels = torch.randn(10, 3, 16, 16), torch.tensor([0, 1] * 5)
    twin = copy.deepcopy(model)
    finetune(model, images, labels, epochs=3, batch_size=4)
    captured = capsys.readouterr()
    assert captured.out == ''
    lines = _progress_lines(captured.err, FINETUNE_LINE)
    assert [(int(m['epoch']), int(m['epochs'])) for m in lines] == [(1, 3), (2, 3), (3, 3)], captured.err

    # the same fine-tune by hand: each line's loss is its epoch's mean training loss per image
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(twin.parameters(), lr=5e-4, weight_decay=0.05)
    twin.train()
    for m in lines:
        order, total = torch.randperm(len(images), generator=generator), 0.0
        for i in range(0, len(images), 4):
            idx = order[i:i + 4]
            loss = nn.functional.cross_entropy(twin(images[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        assert float(m['loss']) == pytest.approx(total / len(images), abs=0.01), m.group(0)
    finetune(model, images, labels, epochs=0)  # nothing to say
    assert capsys.readouterr() == ('', '')


FFN_LINE = re.compile(rf'^bench ffn (?P<i>\d+)/(?P<n>\d+) (?P<variant>.+?): forward (?P<forward>{NUMBER}) ms, '
                      rf'forward\+backward (?P<fwd_bwd>{NUMBER}) ms {ELAPSED}$')


def test_bench_prints_a_line_per_variant_and_per_table(tmp_path, capsys, monkeypatch):
    from timm_kan.bench import format_report, main

    monkeypatch.chdir(tmp_path)
    result = main(['--tokens', '32', '--dim', '8', '--hidden', '16', '--reps', '1', '--warmup', '0',
                   '--variants', 'chebyshev reference', 'bspline reference',
                   '--models', 'vit_tiny_patch16_224', '--path-models', 'chebykan_vit_t16',
                   '--img-size', '32', '--batch-size', '2', '--steps', '1',
                   '--model-kwargs', 'depth=1', 'embed_dim=16', 'num_heads=2'])
    captured = capsys.readouterr()
    assert captured.out == format_report(result) + '\n'  # stdout: the report only

    err = captured.err.splitlines()
    lines = _progress_lines(captured.err, FFN_LINE)
    assert [(m['variant'], int(m['i']), int(m['n'])) for m in lines] == [
        ('mlp', 1, 3), ('chebyshev reference', 2, 3), ('bspline reference', 3, 3)], captured.err
    for m, row in zip(lines, result['ffn']):
        assert float(m['forward']) == pytest.approx(row['forward_ms'], abs=5e-4)
        assert float(m['fwd_bwd']) == pytest.approx(row['fwd_bwd_ms'], abs=5e-4)
    (training,) = [line for line in err if line.startswith('bench training:')]
    rate = result['training'][0]['images_per_second']
    assert re.fullmatch(rf'bench training: vit_tiny_patch16_224 {rate:.1f} images/s {ELAPSED}', training), training
    (paths,) = [line for line in err if line.startswith('bench paths:')]
    row = result['paths'][0]
    assert re.fullmatch(rf'bench paths: chebykan_vit_t16 fused {row["fused_images_per_second"]:.1f} / reference '
                        rf'{row["reference_images_per_second"]:.1f} images/s {ELAPSED}', paths), paths


def test_progress_line_goes_to_stderr_flushed(monkeypatch):
    from timm_kan import io as io_module

    class Stream(io.StringIO):
        flushes = 0

        def flush(self):
            Stream.flushes += 1
            super().flush()

    stdout, stderr = Stream(), Stream()
    monkeypatch.setattr(sys, 'stdout', stdout)
    monkeypatch.setattr(sys, 'stderr', stderr)
    io_module.progress_line('alive')
    assert (stdout.getvalue(), stderr.getvalue(), Stream.flushes) == ('', 'alive\n', 1)
    monkeypatch.setattr(io_module.time, 'perf_counter', lambda: 100.0)
    for start, shown in ((58.6, '41 s'), (0.0, '1 min 40 s'), (-7300.0, '2 h 03 min')):
        io_module.progress_line('step', start=start)
        assert stderr.getvalue().splitlines()[-1] == f'step (elapsed {shown})'

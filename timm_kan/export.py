"""``timm-kan export``: a (KAN-)ViT as one deployable file, checked against PyTorch on a real batch.

``--format onnx`` writes an ONNX model through torch's dynamo exporter (opset 18) and runs it in onnxruntime;
``--format pt2`` writes a ``torch.export`` program (``torch.export.save``) and runs it after ``torch.export.load``.
Both have a dynamic batch dimension: the check runs the file at two batch sizes. The batch is real images
(``--images``, or scikit-learn's digits) through the model's evaluation transform. The file appears only once the
check passed; an existing file is replaced only with ``--overwrite``.
"""
import argparse
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ['EXPORT_FORMATS', 'EXPORT_TOLERANCE', 'add_export_parser', 'check_images', 'export_model']

# max |exported - PyTorch| / max(1, max |PyTorch|) over the check batches
EXPORT_TOLERANCE = 1e-4
_OPSET = 18


def _onnx_runner(model: nn.Module, x: torch.Tensor, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime

    batch = torch.export.Dim('batch', min=1)
    # one self-contained file (the weights inside, not in a .data file next to it)
    torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=_OPSET, input_names=['images'],
                      output_names=['logits'], dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    return lambda batch_x: torch.from_numpy(session.run(None, {'images': batch_x.numpy()})[0])


def _pt2_runner(model: nn.Module, x: torch.Tensor, path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch', min=1)},))
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    return lambda batch_x: loaded(batch_x)


EXPORT_FORMATS: Dict[str, Callable[[nn.Module, torch.Tensor, Path], Callable[[torch.Tensor], torch.Tensor]]] = {
    'onnx': _onnx_runner, 'pt2': _pt2_runner}


def _check_target(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise ValueError(f'--out {out} is a folder: give the file to write, e.g. {out / "model.onnx"}')
    if out.exists() and not overwrite:
        raise ValueError(f'--out {out} exists: pass --overwrite to replace it')
    if not out.parent.is_dir():
        raise FileNotFoundError(f'--out {out}: folder {out.parent} does not exist')
    if not os.access(out.parent, os.W_OK):
        raise PermissionError(f'--out {out}: folder {out.parent} is not writable')


@torch.no_grad()
def export_model(model: nn.Module, out: Path, fmt: str, images: torch.Tensor, overwrite: bool = False) -> float:
    """Write ``model`` (eval mode, CPU) as ``fmt`` to ``out`` and check it on ``images`` and on one image less
    (a dynamic batch); returns the largest relative difference. Raises when it exceeds ``EXPORT_TOLERANCE``, and
    then nothing is written."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f'--format must be one of {", ".join(EXPORT_FORMATS)}, got {fmt!r}')
    if fmt == 'onnx' and not all(importlib.util.find_spec(m) for m in ('onnx', 'onnxscript', 'onnxruntime')):
        raise RuntimeError("--format onnx needs onnx, onnxscript and onnxruntime: pip install 'timm_kan[export]'")
    out = Path(out)
    _check_target(out, overwrite)
    model = model.eval().cpu()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix='.timm_kan-export-') as tmp:
        written = Path(tmp) / out.name
        try:
            run = EXPORT_FORMATS[fmt](model, images, written)
        except Exception as e:  # the exporters' own errors run to pages: their first line names the cause
            first = next((line for line in str(e).splitlines() if line.strip()), '')
            raise RuntimeError(f'--format {fmt}: {type(model).__name__} could not be exported: '
                               f'{type(e).__name__}: {first}') from e
        error = 0.0
        for batch in (images, images[:-1]):
            expected = model(batch)
            scale = max(1.0, float(expected.abs().max()))
            error = max(error, float((run(batch) - expected).abs().max()) / scale)
        if not error <= EXPORT_TOLERANCE:
            raise RuntimeError(f'--format {fmt}: the exported model differs from PyTorch by {error:.3g} (relative; '
                               f'allowed {EXPORT_TOLERANCE:g}); nothing was written')
        os.replace(written, out)
    return error


def check_images(model: nn.Module, paths: Sequence[str], count: int = 4) -> torch.Tensor:
    """A batch of real images in the model's evaluation transform: ``paths``, or the first scikit-learn digits."""
    from PIL import Image
    from timm.data import create_transform

    from .accounting import model_data_config
    from .images import open_rgb

    transform = create_transform(**model_data_config(model))
    if paths:
        pictures = [open_rgb(Path(p)) for p in paths]
    else:
        from sklearn.datasets import load_digits
        digits = load_digits().images[:count]
        pictures = [Image.fromarray(np.round(d * (255 / 16)).astype(np.uint8)).convert('RGB') for d in digits]
    if len(pictures) < 2:
        raise ValueError(f'--images: give at least 2 images (the check runs two batch sizes), got {len(pictures)}')
    return torch.stack([transform(p) for p in pictures])


def _load(args: argparse.Namespace) -> nn.Module:
    """A training checkpoint (its recorded architecture, or --model), or a model name: ``local-dir:``/``hf-hub:``
    with their weights, a registry name as initialised (``--pretrained`` for its weights)."""
    import timm

    from .models import resolve_model_name
    from .predict import load_for_inference

    if Path(args.source).is_file():
        arch = args.model or _recorded_arch(args.source)
        return load_for_inference(arch, args.source, model_kwargs=args.model_kwargs)[0]
    pretrained = args.pretrained or args.source.startswith(('local-dir:', 'hf-hub:'))
    return timm.create_model(resolve_model_name(args.source), pretrained=pretrained, **args.model_kwargs)


def _recorded_arch(checkpoint: str) -> str:
    from .hub import load_training_checkpoint

    arch = load_training_checkpoint(checkpoint)[1].get('arch')
    if not arch:
        raise ValueError(f'{checkpoint} records no architecture: pass --model NAME')
    return arch


def export_command(args: argparse.Namespace) -> None:
    out = Path(args.out)
    _check_target(out, args.overwrite)  # before the slow load
    model = _load(args).eval()
    error = export_model(model, out, args.format, check_images(model, args.images), args.overwrite)
    print(f'wrote {out} ({args.format}); matches PyTorch within {error:.2g} (relative) at two batch sizes')


def add_export_parser(sub) -> None:
    from .arguments import MODEL_KWARGS

    p = sub.add_parser('export', help='write a model as ONNX or a torch.export program, checked against PyTorch')
    p.add_argument('source', help='training checkpoint, local-dir:PATH, hf-hub:ID or a model name')
    p.add_argument('--format', required=True, choices=tuple(EXPORT_FORMATS))
    p.add_argument('--out', required=True, help='file to write (e.g. model.onnx, model.pt2)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing --out file')
    p.add_argument('--model', default=None, help='architecture of a checkpoint that records none')
    p.add_argument('--pretrained', action='store_true', help="a registry name's pretrained weights")
    p.add_argument('--images', nargs='*', default=[], help='images to check on (default: scikit-learn digits)')
    p.add_argument('--model-kwargs', default={}, **MODEL_KWARGS)
    p.set_defaults(fn=export_command)


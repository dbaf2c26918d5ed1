"""The ``timm-kan explain`` command: load a trained model and real images, explain it, optionally prune it."""
import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from ..io import markdown_table, write_json_atomic

__all__ = ['explain_command']


def _load_model(source: str, model_name: str, model_kwargs: Dict[str, Any]
                ) -> Tuple[nn.Module, str, Optional[List[str]]]:
    """The model, its architecture name and its class names (None where the source records none)."""
    import timm

    from ..hub import class_names, load_training_checkpoint, model_from_checkpoint

    if source.startswith(('local-dir:', 'hf-hub:')):
        model = timm.create_model(source, pretrained=True, **model_kwargs)
        labels = model.pretrained_cfg.get('label_names')
        return (model.eval(), model.pretrained_cfg.get('architecture', source),
                class_names(labels, f'{source} label_names') if labels else None)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path} (give a checkpoint file, local-dir:PATH or hf-hub:ID)')
    name = model_name or load_training_checkpoint(path)[1].get('arch')
    if not name:
        raise ValueError(f'{path} does not record its architecture: pass --model NAME')
    model, meta = model_from_checkpoint(name, path, model_kwargs=model_kwargs)
    return model.eval(), name, class_names(meta['class_map'], str(path)) if meta.get('class_map') else None


def _model_classes(data: str, classes: List[str], model_classes: Optional[List[str]]) -> List[str]:
    """The class order labels are read in: the model's own (matched by name) where it records its classes."""
    if model_classes is None:
        return classes
    unknown = [c for c in classes if c not in model_classes]
    if unknown:
        raise ValueError(f'--data {data} has classes the model was not trained on: {", ".join(unknown[:5])} '
                         f'(the model knows {", ".join(model_classes[:10])})')
    return model_classes


def _prune_report(args: argparse.Namespace, model: nn.Module, name: str, records, out: Path) -> str:
    from ..accounting import count_flops, count_parameters
    from ..hub import export_for_hub
    from .prune import prune
    from .run import finetune, load_images, top1

    root, classes = args.prepared
    if model.num_classes != len(classes):
        raise ValueError(f'--prune reports top-1 on {args.data}, which has {len(classes)} classes, but {name} has a '
                         f'head of {model.num_classes}')
    images, labels = load_images(root, classes, model, count=args.eval_images, split='val', seed=args.seed)
    pruned = prune(model, keep=args.prune, records=records)
    rows = [('before', model), (f'pruned keep={args.prune}', pruned)]
    if args.finetune_epochs:
        train_x, train_y = load_images(root, classes, model, count=args.finetune_images, split='train',
                                       seed=args.seed)
        rows.append((f'pruned + {args.finetune_epochs} epoch fine-tune',
                     finetune(prune(model, keep=args.prune, records=records), train_x, train_y, args.finetune_epochs)))
    report = []
    for label, m in rows:
        report.append(dict(model=label, units=sum(m.hidden_widths()), params=count_parameters(m)['total'],
                           gflops=count_flops(m) / 1e9, top1=top1(m, images, labels)))
    write_json_atomic(out / 'prune.json', dict(model=name, keep=args.prune, eval_images=len(images), rows=report))
    export_for_hub(pruned, out / 'pruned', repo_id=f'local/{name}-pruned', overwrite=args.overwrite,
                   option='--out (its pruned/)')
    cells = [[r['model'], r['units'], f'{r["params"] / 1e6:.3f}', f'{r["gflops"]:.4f}', f'{r["top1"]:.2f}']
             for r in report]
    return markdown_table(('model', 'hidden units', 'params (M)', 'GFLOPs', f'top-1 ({len(images)} val images)'),
                          cells)


def explain_command(args: argparse.Namespace) -> None:
    from ..data.sources import data_inputs, prepare_data
    from ..io import check_output_dir, mark_output_dir, output_lock

    source = [] if args.source.startswith(('local-dir:', 'hf-hub:')) else [args.source]
    out = check_output_dir(args.out, 'explain', '--out', source + data_inputs(args.data), args.overwrite)
    model, name, model_classes = _load_model(args.source, args.model, args.model_kwargs)
    with output_lock(out, '--out'):
        mark_output_dir(out, 'explain')
        root, classes = prepare_data(args.data, out, seed=args.seed)
        args.prepared = root, _model_classes(args.data, classes, model_classes)
        _explain(args, model, name, out)


def _explain(args: argparse.Namespace, model: nn.Module, name: str, out: Path) -> None:
    from .records import record_blocks
    from .run import explain_model, load_images, summary_table

    images, _ = load_images(*args.prepared, model, count=args.images, seed=args.seed)
    records = record_blocks(model, images)
    summary = explain_model(model, images, out, name=name, block=args.block, layer=args.layer, top_k=args.top_k,
                            records=records)
    print(summary_table(summary))
    print(f'\nwrote {", ".join(Path(p).name for p in summary["pictures"])} and importance.json in {out}')
    if args.prune is not None:
        print('\n' + _prune_report(args, model, name, records, out))
        print(f'\npruned model in {out / "pruned"}: timm.create_model("local-dir:{out / "pruned"}", pretrained=True)')


def add_explain_parser(sub) -> None:
    from ..arguments import KwargsAction, bounded
    from ..data.sources import DataSpec, data_help

    count = bounded(int, low=1)
    p = sub.add_parser('explain', help="what a KAN-ViT's layers learned: edge functions, importance, pruning")
    p.add_argument('source', help='training checkpoint (compare or timm train.py), local-dir:PATH or hf-hub:ID')
    p.add_argument('--model', default=None, help="architecture (default: the one the checkpoint records)")
    p.add_argument('--data', required=True, type=DataSpec.parse, help=data_help())
    p.add_argument('--out', required=True, help='output folder (new, or one explain made)')
    p.add_argument('--overwrite', action='store_true',
                   help="write into an existing folder explain did not make (only its own files are replaced)")
    p.add_argument('--block', type=bounded(int, low=0), default=None,
                   help='block of the edge plot (default: the last)')
    p.add_argument('--layer', type=int, default=1, choices=(1, 2), help='layer of the edge plot')
    p.add_argument('--top-k', type=count, default=12, help='edges in the edge plot')
    p.add_argument('--images', type=count, default=256, help='validation images the importance is measured on')
    p.add_argument('--prune', type=bounded(float, 0, 1, low_open=True), default=None, metavar='KEEP',
                   help='also prune: share of units kept, in (0, 1]')
    p.add_argument('--finetune-epochs', type=bounded(int, low=0), default=0,
                   help='fine-tune the pruned model this many epochs')
    p.add_argument('--finetune-images', type=count, default=2000)
    p.add_argument('--eval-images', type=count, default=1000, help='validation images of the pruning report')
    p.add_argument('--seed', type=bounded(int, low=0), default=0)
    p.add_argument('--model-kwargs', nargs='*', default={}, action=KwargsAction)
    p.set_defaults(fn=explain_command)

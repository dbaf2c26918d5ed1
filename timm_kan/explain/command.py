"""The ``timm-kan explain`` command: load a trained model and real images, explain it, optionally prune it."""
import argparse
from pathlib import Path
from typing import Any, Dict, Tuple

from torch import nn

from ..io import markdown_table, write_json_atomic

__all__ = ['explain_command']


def _load_model(source: str, model_name: str, model_kwargs: Dict[str, Any]) -> Tuple[nn.Module, str]:
    import timm

    from ..hub import load_training_checkpoint, model_from_checkpoint

    if source.startswith(('local-dir:', 'hf-hub:')):
        model = timm.create_model(source, pretrained=True, **model_kwargs)
        return model.eval(), model.pretrained_cfg.get('architecture', source)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path} (give a checkpoint file, local-dir:PATH or hf-hub:ID)')
    name = model_name or load_training_checkpoint(path)[1].get('arch')
    if not name:
        raise ValueError(f'{path} does not record its architecture: pass --model NAME')
    model, _ = model_from_checkpoint(name, path, model_kwargs=model_kwargs)
    return model.eval(), name


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
    export_for_hub(pruned, out / 'pruned', repo_id=f'local/{name}-pruned')
    cells = [[r['model'], r['units'], f'{r["params"] / 1e6:.3f}', f'{r["gflops"]:.4f}', f'{r["top1"]:.2f}']
             for r in report]
    return markdown_table(('model', 'hidden units', 'params (M)', 'GFLOPs', f'top-1 ({len(images)} val images)'),
                          cells)


def explain_command(args: argparse.Namespace) -> None:
    from .records import record_blocks
    from .run import explain_model, load_images, summary_table

    if args.prune is not None and not 0 < args.prune <= 1:
        raise ValueError(f'--prune must be in (0, 1], got {args.prune}')
    from ..data import prepare_data

    model, name = _load_model(args.source, args.model, args.model_kwargs)
    out = Path(args.out)
    args.prepared = prepare_data(args.data, out, seed=args.seed)
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
    from timm.utils import ParseKwargs

    p = sub.add_parser('explain', help="what a KAN-ViT's layers learned: edge functions, importance, pruning")
    p.add_argument('source', help='training checkpoint (compare or timm train.py), local-dir:PATH or hf-hub:ID')
    p.add_argument('--model', default=None, help="architecture (default: the one the checkpoint records)")
    p.add_argument('--data', required=True, help="'mnist5k', 'digits', 'fashion-mnist' or an image folder")
    p.add_argument('--out', required=True, help='output folder')
    p.add_argument('--block', type=int, default=None, help='block of the edge plot (default: the last)')
    p.add_argument('--layer', type=int, default=1, choices=(1, 2), help='layer of the edge plot')
    p.add_argument('--top-k', type=int, default=12, help='edges in the edge plot')
    p.add_argument('--images', type=int, default=256, help='validation images the importance is measured on')
    p.add_argument('--prune', type=float, default=None, metavar='KEEP', help='also prune: share of units kept')
    p.add_argument('--finetune-epochs', type=int, default=0, help='fine-tune the pruned model this many epochs')
    p.add_argument('--finetune-images', type=int, default=2000)
    p.add_argument('--eval-images', type=int, default=1000, help='validation images of the pruning report')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    p.set_defaults(fn=explain_command)

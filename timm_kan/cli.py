"""The ``timm-kan`` command.

Sub-commands: ``info`` (parameters and FLOPs of a model), ``convert`` (a ViT checkpoint into a KAN-ViT folder
for ``local-dir:``/``hf-hub:``), ``compare`` (train models under one recipe and compare them), ``predict``
(top-k classes of images), ``push`` (a trained checkpoint to the Hugging Face Hub), ``split`` (an image folder
into train/ and val/), ``models`` (README's generated tables), ``merge-results`` (runs of other models into one
results file), ``bench`` (KAN layers against the MLP) and ``explain`` (what a KAN-ViT's layers learned: edge
functions, importance, pruning, symbolic fits).
Every error a user can act on is one line on stderr and exit status 2.
"""
import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

from .arguments import MODEL_KWARGS, OneLineParser, bounded, split_pair

__all__ = ['main', 'build_parser']

_positive_int = bounded(int, low=1)


def _results_item(text: str) -> str:
    """A ``--results`` item, checked when parsed (``models`` splits it later)."""
    split_pair(text, 'NAME=RESULTS_JSON')
    return text


def _one_line(message: object) -> str:
    """A message on one line: some (torch's unpickler, timm) span several."""
    return ' '.join(line.strip() for line in str(message).splitlines() if line.strip())


def _cmd_info(args: argparse.Namespace) -> None:
    import timm
    from .accounting import model_summary
    from .models import resolve_model_name

    model = timm.create_model(resolve_model_name(args.model), device=args.device, **args.model_kwargs)
    summary = model_summary(model)
    if args.json:
        print(json.dumps(dict(model=args.model, **summary), indent=2))
        return
    p = summary['params']
    print(f'{args.model}  input {tuple(summary["input_size"])}')
    print(f'  parameters   {p["total"]:>14,}  (trainable {p["trainable"]:,})')
    for part in ('attention', 'ffn', 'other'):
        print(f'    {part:<10} {p[part]:>14,}  ({100 * p[part] / max(p["total"], 1):.1f}%)')
    print(f'  forward GFLOPs {summary["gflops"]:.3f}  (FlopCounterMode, multiply-add = 2)')


def _cmd_convert(args: argparse.Namespace) -> None:
    import timm
    from .hub import export_for_hub
    from .io import check_output_dir
    from .layers import KAN_FAMILIES
    from .models import family_of_model

    if family_of_model(args.model) is None:
        names = [f.prefix + '_*' for f in KAN_FAMILIES.values()]
        raise ValueError(f'--model {args.model} is not a KAN-ViT: convert builds {", ".join(names[:-1])} or '
                         f'{names[-1]} models from a ViT checkpoint')
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f'--checkpoint: checkpoint not found: {checkpoint}')
    check_output_dir(args.out, 'export', '--out', [checkpoint], args.overwrite)  # before the slow load
    overlay = dict(file=str(checkpoint), custom_load=checkpoint.suffix == '.npz')
    if args.source_num_classes is not None:
        overlay['num_classes'] = args.source_num_classes
    kwargs = dict(args.model_kwargs)
    if args.num_classes is not None:
        kwargs['num_classes'] = args.num_classes
    model = timm.create_model(
        args.model, pretrained=True, pretrained_cfg_overlay=overlay, kan_init=args.kan_init,
        pretrained_strict=not args.no_strict, pretrained_resample=args.resample, **kwargs)
    out = export_for_hub(model, args.out, repo_id=f'local/{Path(args.out).name}', overwrite=args.overwrite,
                         inputs=[checkpoint], option='--out')
    print(f'wrote {out}: load with timm.create_model("local-dir:{out}", pretrained=True) after import timm_kan')


def _cmd_compare(args: argparse.Namespace) -> int:
    from .comparison import run_compare
    from .comparison.config import config_from_args
    from .comparison.results import format_table

    cfg = config_from_args(args)
    results = run_compare(cfg)
    results_file = Path(cfg.output) / 'results.json'
    failed = json.loads(results_file.read_text()).get('failed', []) if results_file.is_file() else []
    if int(os.environ.get('RANK', '0')) == 0:
        if results:
            print(format_table(results))
        print(f'\noutputs in {cfg.output}: results.json, results.csv, loss.png, accuracy.png, accuracy_vs_gflops.png, '
              'accuracy_vs_params.png')
        for failure in failed:
            print(f'error: {failure["error"]}', file=sys.stderr)
    return 1 if failed else 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import load_for_inference, predict_images

    model, names = load_for_inference(args.model, args.checkpoint, args.class_map, args.model_kwargs)
    failed = 0
    for path, preds in zip(args.images, predict_images(model, names, args.images, args.top_k)):
        if isinstance(preds, str):
            failed += 1
            print(f'error: {preds}', file=sys.stderr)
            continue
        print(path)
        for name, p in preds:
            print(f'  {p:7.4f}  {name}')
    if failed:
        print(f'error: {failed} of {len(args.images)} image(s) could not be read', file=sys.stderr)
        return 1
    return 0


def _cmd_push(args: argparse.Namespace) -> None:
    from .hub import agreeing_class_names, class_names, export_for_hub, model_from_checkpoint, push_to_hub, \
        validate_repo_id
    from .io import check_output_dir

    validate_repo_id(args.repo_id)
    inputs = [args.checkpoint] + ([args.class_map] if args.class_map else [])
    if args.export_only:  # before the slow load
        check_output_dir(args.export_only, 'export', '--export-only', inputs, args.overwrite)
    metrics = None
    if args.metrics:
        try:
            metrics = json.loads(args.metrics)
        except json.JSONDecodeError as e:
            raise ValueError(f'--metrics is not JSON ({e}): give an object such as \'{{"top1": 91.5}}\'') from None
        if not isinstance(metrics, dict):
            raise ValueError(f'--metrics must be a JSON object such as \'{{"top1": 91.5}}\', got {args.metrics}')
    model, meta = model_from_checkpoint(
        args.model, args.checkpoint, num_classes=args.num_classes, model_kwargs=args.model_kwargs,
        use_ema=not args.no_ema)
    labels = agreeing_class_names(
        class_names(meta['class_map'], args.checkpoint) if meta.get('class_map') else None, args.class_map)
    if args.export_only:
        out = export_for_hub(model, args.export_only, repo_id=args.repo_id, label_names=labels, metrics=metrics,
                             dataset=args.dataset, recipe=args.recipe, overwrite=args.overwrite,
                             inputs=inputs, option='--export-only')
        print(f'wrote {out} (not uploaded)')
        return
    try:
        push_to_hub(model, args.repo_id, private=args.private, token=args.token, metrics=metrics,
                    dataset=args.dataset, recipe=args.recipe, label_names=labels, timeout=args.timeout)
    except TimeoutError as e:
        raise TimeoutError(f'push: {e} (--timeout)') from None
    print(f'pushed to {args.repo_id}: timm.create_model("hf-hub:{args.repo_id}", pretrained=True)')


def _cmd_split(args: argparse.Namespace) -> None:
    from .data.split import split_image_folder

    classes = split_image_folder(Path(args.src), Path(args.dst), args.val_ratio, args.seed)
    print(f'{args.dst}/train and {args.dst}/val: {len(classes)} classes, class map in {args.dst}/class_indices.json')


def _cmd_models(args: argparse.Namespace) -> None:
    from .tables import registry_table, update_readme
    if args.update_readme:
        results = dict(item.split('=', 1) for item in args.results)
        update_readme(args.update_readme, args.compare_results, args.bench_results, args.cpu_bench_results, results)
    else:
        print(registry_table())


def _cmd_merge_results(args: argparse.Namespace) -> None:
    from .comparison.results import merge_results, write_results
    from .io import check_output_dir, mark_output_dir

    if len(args.results) < 2:
        raise ValueError('merge-results: give two or more results.json files (the first one\'s metadata is kept)')
    out = check_output_dir(args.out, 'merge-results', '--out', args.results, args.overwrite)
    runs = []
    for path in args.results:
        try:
            run = json.loads(Path(path).read_text())
        except ValueError as e:
            raise ValueError(f'{path} is not a results.json of timm-kan compare ({e})') from None
        if not isinstance(run, dict) or not isinstance(run.get('results'), list):
            raise ValueError(f'{path} is not a results.json of timm-kan compare (no results list)')
        runs.append(run)
    merged = merge_results(runs, args.results)
    out.mkdir(parents=True, exist_ok=True)
    mark_output_dir(out, 'merge-results')
    write_results(merged['results'], out, {k: v for k, v in merged.items() if k != 'results'})
    print(f'wrote {out}: results.json ({len(merged["results"])} runs), results.csv and the plots')


def _cmd_bench(args: argparse.Namespace) -> None:
    from .bench import main as bench_main
    bench_main(args.bench_args)


def _kwargs_option(p: argparse.ArgumentParser) -> None:
    p.add_argument('--model-kwargs', default={}, **MODEL_KWARGS)


def _add_info(sub) -> None:
    p = sub.add_parser('info', help='parameters (total, trainable, per part) and forward GFLOPs of a model')
    p.add_argument('model')
    _kwargs_option(p)
    p.add_argument('--device', default='cpu')
    p.add_argument('--json', action='store_true')
    p.set_defaults(fn=_cmd_info)


def _add_convert(sub) -> None:
    from .models import KAN_INITS

    p = sub.add_parser('convert', help='convert a ViT checkpoint into a KAN-ViT folder for local-dir:/hf-hub:')
    p.add_argument('--model', required=True, help='KAN-ViT architecture, e.g. chebykan_vit_base_patch16_224')
    p.add_argument('--checkpoint', required=True, help='ViT checkpoint: .safetensors, .pth/.bin or Google .npz')
    p.add_argument('--out', required=True, help='output folder (new, or one convert made)')
    p.add_argument('--overwrite', action='store_true',
                   help="write into an existing folder convert did not make (only its own files are replaced)")
    p.add_argument('--num-classes', type=_positive_int, default=None, help='classes of the new head')
    p.add_argument('--source-num-classes', type=_positive_int, default=None,
                   help="classes of the checkpoint's head (default: the architecture's pretrained tag)")
    p.add_argument('--kan-init', choices=KAN_INITS, default='mlp')
    p.add_argument('--no-strict', action='store_true', help='skip (and list) checkpoint tensors with no place')
    p.add_argument('--resample', action='store_true',
                   help="resample the checkpoint's patch and position embeddings to the model's patch/image size")
    _kwargs_option(p)
    p.set_defaults(fn=_cmd_convert)


def _add_compare(sub) -> None:
    from .comparison.config import add_compare_options

    p = sub.add_parser('compare', help='train several models under one recipe and compare them')
    add_compare_options(p)
    p.set_defaults(fn=_cmd_compare)


def _add_predict(sub) -> None:
    p = sub.add_parser('predict', help='top-k classes of images')
    p.add_argument('--model', required=True, help='model name, hf-hub:ORG/NAME or local-dir:PATH')
    p.add_argument('--checkpoint', default=None, help='training checkpoint (compare or timm train.py)')
    p.add_argument('--class-map', default=None, help='class_indices.json or a JSON list of names')
    p.add_argument('--top-k', type=_positive_int, default=5)
    _kwargs_option(p)
    p.add_argument('images', nargs='+')
    p.set_defaults(fn=_cmd_predict)


def _add_push(sub) -> None:
    p = sub.add_parser('push', help='push a trained checkpoint to the Hugging Face Hub in timm format')
    p.add_argument('checkpoint')
    p.add_argument('--model', required=True)
    p.add_argument('--repo-id', required=True, help='ORG/NAME')
    p.add_argument('--num-classes', type=_positive_int, default=None)
    p.add_argument('--class-map', default=None)
    _kwargs_option(p)
    p.add_argument('--no-ema', action='store_true', help='push the raw weights even if EMA weights exist')
    p.add_argument('--metrics', default=None, help='JSON object of metrics for the model card')
    p.add_argument('--dataset', default=None)
    p.add_argument('--recipe', default=None)
    p.add_argument('--private', action='store_true')
    p.add_argument('--token', default=None)
    p.add_argument('--timeout', type=bounded(float, low=0, low_open=True), default=60.0, metavar='SECONDS',
                   help='give up when the Hub does not answer a request within this time (default: 60)')
    p.add_argument('--export-only', default=None, metavar='DIR', help='write the upload folder here, upload nothing')
    p.add_argument('--overwrite', action='store_true',
                   help="with --export-only: write into an existing folder push did not make (only its own files "
                        "are replaced)")
    p.set_defaults(fn=_cmd_push)


def _add_split(sub) -> None:
    p = sub.add_parser('split', help='split a one-folder-per-class data set into train/ and val/ (links)')
    p.add_argument('src')
    p.add_argument('dst')
    p.add_argument('--val-ratio', type=bounded(float, 0, 1, low_open=True, high_open=True), default=0.2)
    p.add_argument('--seed', type=bounded(int, low=0), default=0)
    p.set_defaults(fn=_cmd_split)


def _add_models(sub) -> None:
    p = sub.add_parser('models', help="markdown table of the registered models (README's table)")
    p.add_argument('--update-readme', default=None, metavar='README',
                   help='rewrite the generated tables in this file and in the docs/*.md pages next to it')
    p.add_argument('--compare-results', default=None, help="results.json whose table goes into the README")
    p.add_argument('--bench-results', default=None, help='timm-kan bench --json output measured on a GPU')
    p.add_argument('--cpu-bench-results', default=None, help='timm-kan bench --json output measured on a CPU')
    p.add_argument('--results', nargs='*', default=[], type=_results_item, metavar='NAME=RESULTS_JSON',
                   help='compare results.json files for the README blocks results-NAME')
    p.set_defaults(fn=_cmd_models)


def _add_merge_results(sub) -> None:
    p = sub.add_parser('merge-results', help="compare runs of other models, under the first run's configuration, "
                                             'into one results file')
    p.add_argument('results', nargs='+', metavar='RESULTS_JSON', help='results.json files; the first one sets the '
                   'configuration every other must share')
    p.add_argument('--out', required=True, help='output folder: results.json, results.csv and the plots')
    p.add_argument('--overwrite', action='store_true',
                   help='write into an existing folder merge-results did not make (only its own files are replaced)')
    p.set_defaults(fn=_cmd_merge_results)


def _add_bench(sub) -> None:
    p = sub.add_parser('bench', help='time KAN layers against the MLP (see timm-kan bench --help)', add_help=False)
    p.add_argument('bench_args', nargs=argparse.REMAINDER)
    p.set_defaults(fn=_cmd_bench)


def _cmd_timm(args: argparse.Namespace) -> int:
    from .run_script import run_script
    if not args.script_args:
        raise ValueError('timm: give the script to run, e.g. timm-kan timm PATH/validate.py --model chebykan_vit_t16')
    return run_script(args.script_args[0], args.script_args[1:])


def _add_timm(sub) -> None:
    p = sub.add_parser('timm', add_help=False,
                       help="run one of timm's scripts (validate.py, inference.py, ...) with the KAN-ViTs registered")
    p.add_argument('script_args', nargs=argparse.REMAINDER, help='SCRIPT [ARGS...]')
    p.set_defaults(fn=_cmd_timm)


# commands that hand their arguments on whole (argparse's REMAINDER does not take a leading --option)
_PASS_THROUGH = {'bench': 'bench_args', 'timm': 'script_args'}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog='timm-kan', description='KAN Vision Transformers for timm.')
    parser.add_argument('-v', '--verbose', action='store_true', help='log progress at INFO level')
    sub = parser.add_subparsers(dest='command', required=True)
    from .explain.command import add_explain_parser
    from .export import add_export_parser

    for add in (_add_info, _add_convert, _add_compare, _add_predict, _add_push, _add_split, _add_models,
                _add_merge_results, _add_bench, _add_timm, add_explain_parser, add_export_parser):
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = False
    try:
        parser = build_parser()
        if argv[:1] and argv[0] in _PASS_THROUGH:
            args = parser.parse_args(argv[:1])
            setattr(args, _PASS_THROUGH[argv[0]], argv[1:])
        else:
            args = parser.parse_args(argv)
        verbose = args.verbose
        if args.command != 'timm':  # timm's scripts set up their own logging
            logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                                format='%(levelname)s %(name)s: %(message)s')
        import timm_kan  # noqa: F401  registers the models
        return args.fn(args) or 0
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError) as e:
        print(f'error: {_one_line(e)}', file=sys.stderr)
        return 2
    except Exception as e:  # a bad input that reached a check-less path (KeyError, json, unpickling...): one line
        if verbose:
            raise
        print(f'error: {type(e).__name__}: {_one_line(e)} (run with -v for the traceback)', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())

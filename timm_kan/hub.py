"""Publish KAN-ViT weights to the Hugging Face Hub in timm's format, and read training checkpoints.

The folder written by :func:`export_for_hub` is exactly what :func:`push_to_hub` uploads: timm's
``save_for_hf`` output (``config.json`` with ``architecture`` and every KAN option as ``model_args``,
``model.safetensors`` only) plus a model card. Anyone with ``timm_kan`` imported loads it with
``timm.create_model("hf-hub:ORG/NAME", pretrained=True)`` or ``"local-dir:PATH"``.
"""
import contextlib
import json
import math
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from timm.models import load_state_dict, save_for_hf
from timm.models._hub import generate_readme

from .accounting import model_summary
from .io import EXPORT_MARKER_KEY, atomic_dir, check_output_dir, write_json_atomic
from .layers import KAN_FAMILIES

__all__ = ['export_for_hub', 'push_to_hub', 'model_card', 'load_training_checkpoint', 'read_class_map',
           'validate_repo_id', 'model_from_checkpoint', 'class_names', 'agreeing_class_names']


def validate_repo_id(repo_id: str) -> str:
    """``repo_id`` if it is a Hub repository id of the form ORG/NAME (huggingface_hub's own rules), else ValueError."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id as hf_validate

    try:
        if not isinstance(repo_id, str) or repo_id.count('/') != 1:
            raise HFValidationError('expected exactly one "/"')
        hf_validate(repo_id)
    except HFValidationError as e:
        raise ValueError(f'repo_id must look like ORG/NAME (letters, digits, "-", "_", "."), got {repo_id!r}: '
                         f'{e}') from None
    return repo_id


def _class_index(key: Any, source: str) -> int:
    """A class map key as an index: an int, or its plain decimal text ('00', '0x', ' 1', '1_0' are refused)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.isascii() and key.isdigit() and str(int(key)) == key:
        return int(key)
    raise ValueError(f'{source}: class map keys must be class indices 0..N-1, got {key!r}')


def class_names(mapping: Union[Dict[Any, str], Sequence[str]], source: str = 'class map') -> List[str]:
    """Class names by index from a list, or a {index: name} map with int or str keys (class_indices.json).

    Every index 0..N-1 exactly once and every name a distinct string, else ValueError naming ``source``.
    """
    if isinstance(mapping, dict):
        index: Dict[int, Any] = {}
        for key, name in mapping.items():
            i = _class_index(key, source)
            if i in index:
                raise ValueError(f'{source}: class index {i} appears twice')
            index[i] = name
        if sorted(index) != list(range(len(index))):
            raise ValueError(f'{source}: class indices must be 0..{len(index) - 1}, got {sorted(index)}')
        names = [index[i] for i in range(len(index))]
    elif isinstance(mapping, (list, tuple)):
        names = list(mapping)
    else:
        raise ValueError(f'{source}: expected a JSON list or object of class names, got {type(mapping).__name__}')
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise ValueError(f'{source}: class names must be strings, got {bad[0]!r}')
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f'{source}: duplicate class name {name!r}')
        seen.add(name)
    return names


def read_class_map(path: Union[str, Path]) -> List[str]:
    """Class names by index from a JSON list or a {"0": "daisy", ...} map (the seed's class_indices.json)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'class map not found: {path}')
    try:
        mapping = json.loads(path.read_text(encoding='utf-8'))
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError: say which file
        raise ValueError(f'class map {path} is not JSON: {e}') from None
    return class_names(mapping, str(path))


def agreeing_class_names(recorded: Optional[List[str]], class_map: Optional[Union[str, Path]]) -> Optional[List[str]]:
    """The class names a model is used with: ``class_map``'s (a file) where given, else the ``recorded`` ones. Both
    given must agree name for name: labels go by name, and a reordered map would relabel every image."""
    if not class_map:
        return recorded
    given = read_class_map(class_map)
    if recorded is not None and given != recorded:
        where = next((f'class {i} is {a!r} there, {b!r} in the model' for i, (a, b) in enumerate(zip(given, recorded))
                      if a != b), f'{len(given)} classes there, {len(recorded)} in the model')
        raise ValueError(f'--class-map {class_map} disagrees with the class map the model records ({where}); '
                         "leave --class-map out to use the model's")
    return given


def _check_labels(model: nn.Module, label_names: Optional[Sequence[str]]) -> None:
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f'class map has {len(label_names)} names but the model head has {model.num_classes} classes')


def model_card(
        model: nn.Module,
        repo_id: str,
        metrics: Optional[Dict[str, Any]] = None,
        dataset: Optional[str] = None,
        recipe: Optional[str] = None,
) -> Dict[str, Any]:
    """Model-card fields for timm's ``generate_readme``, with sizes from the accounting function."""
    arch = model.pretrained_cfg['architecture']
    summary = model_summary(model)
    kan_args = dict(getattr(model, 'kan_args', {}))
    kan_type = kan_args.pop('kan_type', None)
    details: Dict[str, Any] = {
        'Model Type': 'Image classification / feature backbone (KAN Vision Transformer)',
        'Architecture': arch,
        'KAN type': KAN_FAMILIES[kan_type].display if kan_type else 'none',
        'KAN options': {k: v for k, v in kan_args.items()} or 'none',
        'Params (M)': f"{summary['params_m']:.2f}",
        'GMACs x2 (GFLOPs)': f"{summary['gflops']:.2f}",
        'Image size': 'x'.join(str(s) for s in summary['input_size'][1:]),
        'Classes': model.num_classes,
    }
    base = getattr(model, 'kanify_args', {}).get('base')
    if base:  # a kanified timm model (``chebykan``, base=...)
        details.update({'Model Type': 'Image classification / feature backbone (KAN feed-forward blocks)',
                        'Base model': base, 'Base weights': model.pretrained_cfg.get('base_weights', 'unknown')})
    if dataset:
        details['Dataset'] = dataset
    if recipe:
        details['Training recipe'] = recipe
    if metrics:
        details['Metrics'] = dict(metrics)
    usage = (
        '```python\nimport timm_kan  # registers the KAN-ViT architectures with timm\nimport timm\n'
        f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True)\n```\n\n'
        'With Hugging Face transformers (its timm wrapper), also after `import timm_kan`:\n\n'
        '```python\nimport timm_kan\nfrom transformers import AutoModelForImageClassification, pipeline\n'
        f'model = AutoModelForImageClassification.from_pretrained("{repo_id}")\n'
        f'classify = pipeline("image-classification", model="{repo_id}")\n```\n\n'
        'For deployment: `timm-kan export hf-hub:' + repo_id + ' --format onnx --out model.onnx` (or `--format pt2`) '
        'writes the model and checks it against PyTorch.\n'
    )
    made = f'{base} (timm) with every MLP' if base else f"A Vision Transformer ({arch}) with each block's MLP"
    return {
        'description': f'{made} replaced by a {details["KAN type"]} feed-forward block (made with timm_kan). '
                       'Loading needs `import timm_kan` before `timm.create_model`.',
        'details': details,
        'usage': usage,
        'tags': ['image-classification', 'timm', 'timm_kan', 'kan'],
    }


def _save_weights_and_config(model: nn.Module, out_dir: Path, label_names: Optional[Sequence[str]]) -> None:
    """timm's ``save_for_hf`` with the resolved KAN options passed as ``model_args``. Taken out of config.json's
    ``model_args``: the load-time options (``kan_init``, ``freeze``, ``pretrained_strict``) that timm recorded from
    ``create_model`` (they said how the source checkpoint was adapted, not what the saved weights are), and
    ``num_classes``, which config.json holds at its top level: transformers' timm wrapper passes it itself and
    refuses a second one; timm reads it from there."""
    from ._version import __version__
    from .models import ADAPTER_KWARGS, architecture_args

    save_for_hf(model, out_dir, model_config={'label_names': list(label_names)} if label_names else None,
                model_args=architecture_args(model) or None, safe_serialization=True)
    config_path = out_dir / 'config.json'
    config = json.loads(config_path.read_text())
    config['model_args'] = {k: v for k, v in config.get('model_args', {}).items()
                            if k not in ADAPTER_KWARGS and k != 'num_classes'}
    config[EXPORT_MARKER_KEY] = __version__  # as transformers_version: who wrote it; a re-export may replace it
    write_json_atomic(config_path, config)


def export_for_hub(
        model: nn.Module,
        out_dir: Union[str, Path],
        repo_id: str = 'ORG/NAME',
        label_names: Optional[Sequence[str]] = None,
        metrics: Optional[Dict[str, Any]] = None,
        dataset: Optional[str] = None,
        recipe: Optional[str] = None,
        overwrite: bool = False,
        inputs: Sequence[Union[str, Path]] = (),
        option: str = 'out_dir',
) -> Path:
    """Write the folder that :func:`push_to_hub` uploads: config.json, model.safetensors, README.md.

    A new folder appears whole or not at all (written beside it, then renamed). An existing folder is written into
    only when an earlier export made it, or with ``overwrite``; either way only these three files are replaced.
    The current folder, ``inputs`` (e.g. the source checkpoint) and folders holding them are refused; ``option``
    names the folder in errors (the command's flag).
    """
    out_dir = check_output_dir(out_dir, 'export', option, inputs, overwrite)
    _check_labels(model, label_names)
    card = model_card(model, repo_id, metrics=metrics, dataset=dataset, recipe=recipe)
    with atomic_dir(out_dir, 'export', mark=False) as tmp:
        _save_weights_and_config(model, tmp, label_names)
        (tmp / 'README.md').write_text(generate_readme(card, repo_id.split('/')[-1]), encoding='utf-8')
    return out_dir


def push_to_hub(
        model: nn.Module,
        repo_id: str,
        *,
        private: bool = False,
        token: Optional[str] = None,
        metrics: Optional[Dict[str, Any]] = None,
        dataset: Optional[str] = None,
        recipe: Optional[str] = None,
        label_names: Optional[Sequence[str]] = None,
        commit_message: str = 'Add KAN-ViT model',
        revision: Optional[str] = None,
        timeout: float = 60.0,
) -> Any:
    """Upload the folder :func:`export_for_hub` writes (as timm's ``push_to_hf_hub`` does: create the repository,
    keep a model card it already has, upload the folder in one commit); every check runs before anything is sent.

    Each request waits at most ``timeout`` seconds to connect and for each send or receive (huggingface_hub
    retries some of them with back-off before giving up). The export is a temporary folder, removed however
    the push ends, Ctrl-C included.

    Raises:
        ValueError: malformed ``repo_id``, ``label_names`` whose length differs from the head, or a ``timeout``
            that is not a finite number > 0.
        RuntimeError: no token given or stored (``huggingface-cli login`` or ``HF_TOKEN``).
        TimeoutError: the Hub did not answer a request within ``timeout`` seconds.
        ConnectionError: the Hub cannot be reached (refused, reset, no route).
    """
    from huggingface_hub import HfApi, get_token

    validate_repo_id(repo_id)
    _check_labels(model, label_names)
    if not 0 < timeout < math.inf:
        raise ValueError(f'timeout must be a finite number of seconds > 0, got {timeout}')
    token = token or get_token()
    if not token:
        raise RuntimeError(
            'no Hugging Face token: pass token=..., set HF_TOKEN, or run `huggingface-cli login` first')
    api = HfApi(token=token, library_name='timm_kan')
    with tempfile.TemporaryDirectory() as tmp, _bounded_hub_requests(timeout) as (timeouts, unreachable):
        folder = export_for_hub(model, Path(tmp) / 'export', repo_id=repo_id, label_names=label_names,
                                metrics=metrics, dataset=dataset, recipe=recipe)
        try:
            repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
            if api.file_exists(repo_id=repo_id, filename='README.md', revision=revision):
                (folder / 'README.md').unlink()
            return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                     commit_message=commit_message)
        except timeouts as e:
            raise TimeoutError(f'the Hub at {api.endpoint} did not answer within {timeout:g} s') from e
        except unreachable as e:
            raise ConnectionError(f'cannot reach the Hub at {api.endpoint}: {e}') from e


@contextlib.contextmanager
def _bounded_hub_requests(timeout: float) -> Iterator[Tuple[Tuple[type, ...], Tuple[type, ...]]]:
    """While open, every request huggingface_hub sends waits at most ``timeout`` s to connect and for each send or
    receive, even one that passes its own timeout (file_exists asks for 10 s). Yields the exception types of a
    timeout and of any other network failure. huggingface_hub's client factory is restored on exit, Ctrl-C
    included."""
    from huggingface_hub.utils import _http

    if hasattr(_http, 'set_client_factory'):  # huggingface_hub >= 1.0: one shared httpx client (httpx2 from 2.0)
        httpx = getattr(_http, 'httpx2', None) or _http.httpx
        limits = httpx.Timeout(timeout).as_dict()
        previous, configure = _http._GLOBAL_CLIENT_FACTORY, _http.set_client_factory
        errors = (httpx.TimeoutException,), (httpx.TransportError,)

        def bounded_client() -> Any:
            def bound(request: Any) -> None:
                request.extensions = dict(request.extensions, timeout=limits)

            client = previous()
            client.event_hooks = dict(client.event_hooks, request=[*client.event_hooks['request'], bound])
            return client
    else:  # older releases: a requests session per thread
        previous, configure = _http._GLOBAL_BACKEND_FACTORY, _http.configure_http_backend
        errors = (_http.requests.exceptions.Timeout,), (_http.requests.exceptions.ConnectionError,)

        def bounded_client() -> Any:
            session = previous()
            for adapter in session.adapters.values():
                def send(request: Any, _send: Callable[..., Any] = adapter.send, **kwargs: Any) -> Any:
                    return _send(request, **dict(kwargs, timeout=timeout))
                adapter.send = send
            return session

    configure(bounded_client)
    try:
        yield errors
    finally:
        configure(previous)


def load_training_checkpoint(
        path: Union[str, Path],
        use_ema: bool = True,
) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Weights and metadata (``arch``, ``model_args``, ``class_map``) of a training checkpoint.

    Reads timm ``train.py`` checkpoints (``state_dict`` / ``state_dict_ema``; EMA wins unless
    ``use_ema=False``), ``timm-kan compare`` checkpoints (which also record the run's evaluation transform as
    ``data_config``) and bare state dicts, with ``weights_only=True``.
    The model arguments are those this package's trainer records, or ``args.model_kwargs`` of timm's.
    """
    import argparse

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        state_dict = load_state_dict(str(path), use_ema=use_ema)
    except Exception as e:
        import zipfile

        with path.open('rb') as f:
            first = f.read(1)
        if path.suffix != '.safetensors' and not zipfile.is_zipfile(path) and first != b'\x80':  # zip or pickle
            raise RuntimeError(f'{path} is not a PyTorch checkpoint (neither a zip archive nor a pickle)') from None
        raise RuntimeError(f'cannot read {path} as a weights-only checkpoint: {e}') from e
    meta: Dict[str, Any] = {'model_args': {}, 'class_map': None, 'arch': None, 'data_config': None}
    if path.suffix != '.safetensors':
        with torch.serialization.safe_globals([argparse.Namespace]):
            raw = torch.load(path, map_location='meta', weights_only=True)
        if isinstance(raw, dict):
            meta['model_args'] = dict(raw.get('model_args') or getattr(raw.get('args'), 'model_kwargs', None) or {})
            meta['class_map'] = raw.get('class_map')
            meta['arch'] = raw.get('arch')
            meta['data_config'] = raw.get('data_config')
    return state_dict, meta


def _check_architecture(model_name: str, arch: Optional[str], checkpoint: Union[str, Path]) -> None:
    """A KAN-ViT checkpoint cannot become a plain ViT: say so instead of failing on its KAN options."""
    from .models import family_of_model

    if arch and family_of_model(arch) is not None and family_of_model(model_name) is None \
            and not model_name.startswith(('hf-hub:', 'local-dir:')):
        raise ValueError(f'{checkpoint} holds a {arch} (a {family_of_model(arch).display} ViT), not a {model_name}: '
                         f'pass --model {arch}')


def model_from_checkpoint(
        model_name: str,
        checkpoint: Union[str, Path],
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        use_ema: bool = True,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Build ``model_name`` and load a training checkpoint into it, strictly.

    The class count comes from ``num_classes`` or the checkpoint's head; architecture arguments from
    the checkpoint's recorded model arguments, overridden by ``model_kwargs``.

    Raises:
        RuntimeError: the checkpoint's tensors do not match the model (names the keys and shapes).
    """
    import timm

    from .models import architecture_kwargs

    state_dict, meta = load_training_checkpoint(checkpoint, use_ema=use_ema)
    _check_architecture(model_name, meta.get('arch'), checkpoint)
    kwargs = architecture_kwargs(model_name, dict(meta['model_args'], **(model_kwargs or {})))
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    elif 'head.weight' in state_dict:
        kwargs['num_classes'] = state_dict['head.weight'].shape[0]
    kwargs.pop('pretrained', None)
    model = timm.create_model(model_name, **kwargs)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [f'{k}: model {tuple(expected[k].shape)}, checkpoint {tuple(v.shape)}'
             for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f'missing {len(missing)}: {", ".join(missing[:5])}')
        if unexpected:
            parts.append(f'unexpected {len(unexpected)}: {", ".join(unexpected[:5])}')
        if wrong:
            parts.append(f'shape mismatch {len(wrong)}: {"; ".join(wrong[:3])}')
        raise RuntimeError(f'{checkpoint} does not match {model_name}: ' + ' | '.join(parts))
    model.load_state_dict(state_dict)
    if meta['data_config']:  # the run's evaluation transform: predict, explain and export preprocess as it did
        keep = ('crop_pct', 'crop_mode', 'interpolation', 'mean', 'std')
        model.pretrained_cfg = dict(model.pretrained_cfg, **{
            k: tuple(v) if isinstance(v, list) else v for k, v in meta['data_config'].items() if k in keep})
    return model, meta

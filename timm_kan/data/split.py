"""Splits for ``timm-kan compare``, ``split`` and ``explain``: image folders split by seed, arrays of a bundled
set written as PNG files, and Fashion-MNIST's official split.

Everything ends up as ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` so that timm's
``create_dataset`` / ``create_loader`` read it (which source gives what: :mod:`timm_kan.data.sources`).

A split made here carries ``split.json``, a manifest of what it was made from (source, seed, ratio, limits
and a hash of the source's file list); it is reused only when the manifest matches, and it is written to
a temporary folder and renamed, so an interrupt never leaves a half split that looks complete.
"""
import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..io import LOCK_FILE, DataError, OUTPUT_MARKER, atomic_dir, check_placement, write_class_map
from .fashion_mnist import FASHION_MNIST_CLASSES, read_fashion_mnist

__all__ = ['IMAGE_EXTENSIONS', 'split_image_folder', 'prepare_folder', 'prepare_arrays', 'prepare_fashion_mnist',
           'check_val_ratio', 'check_max_items', 'folder_manifest', 'manifest_changes', 'split_listing',
           'split_class_map']

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm')
MANIFEST = 'split.json'
_MANIFEST_VERSION = 1


def _write_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                 ids: np.ndarray) -> None:
    """One PNG per image, named by its index in the source set (the same item has the same name in any split)."""
    from PIL import Image
    for idx, img, label in zip(ids, images, labels):
        folder = root / split / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode='L').save(folder / f'{idx:05d}.png')


def check_max_items(max_items: Optional[int]) -> None:
    """``--max-items``: None (all items) or an integer >= 1; compare checks it before writing anything."""
    if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1):
        raise DataError(f'--max-items must be an integer >= 1, got {max_items!r}')


def _subset(count: int, seed: int, max_items: Optional[int]) -> np.ndarray:
    """The indices of the items used: all, or ``max_items`` of them drawn with ``seed`` (sorted)."""
    check_max_items(max_items)
    if max_items is None:
        return np.arange(count)
    return np.sort(np.random.RandomState(seed).permutation(count)[:max_items])


def prepare_fashion_mnist(folder: Path, root: Path, seed: int, max_items: Optional[int]) -> List[str]:
    """The official training set (``max_items`` of it drawn with ``seed``) and test set, as PNG folders."""
    sets = read_fashion_mnist(folder)
    images, labels = sets['train']
    ids = _subset(len(labels), seed, max_items)
    sizes = ','.join(str(p.stat().st_size) for p in sorted(Path(folder).iterdir()) if 'idx' in p.name)
    manifest = _manifest(f'fashion-mnist:{Path(folder).resolve()}', seed, None, max_items, sizes)
    classes = list(FASHION_MNIST_CLASSES)
    if _reusable(root, manifest):
        return classes
    _ensure_replaceable(root)
    with atomic_dir(root, 'split', whole=True) as tmp:
        _write_split(tmp, 'train', images[ids], labels[ids], classes, ids)
        val_images, val_labels = sets['val']
        _write_split(tmp, 'val', val_images, val_labels, classes, np.arange(len(val_labels)))
        _write_manifest(tmp, manifest, classes)
    return classes


def check_val_ratio(val_ratio: float) -> None:
    if not 0 < val_ratio < 1:
        raise DataError(f'--val-ratio must be between 0 and 1 (exclusive), got {val_ratio}: '
                        'both the training and the validation split need images')


def _per_class_split(labels: Sequence[int], val_ratio: float, seed: int) -> List[bool]:
    """True for validation items: per class, ``val_ratio`` of its items drawn with ``random.Random(seed)``."""
    rng = random.Random(seed)
    is_val = [False] * len(labels)
    by_class: Dict[int, List[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    for label in sorted(by_class):
        items = by_class[label]
        for i in rng.sample(items, k=int(len(items) * val_ratio)):
            is_val[i] = True
    return is_val


def _check_split_sizes(is_val: Sequence[bool], source: str, val_ratio: float) -> None:
    n_val = int(sum(is_val))
    n_train = len(is_val) - n_val
    if n_val == 0 or n_train == 0:
        raise DataError(
            f'{source}: splitting {len(is_val)} images with val_ratio={val_ratio} gives {n_train} training and '
            f'{n_val} validation images; both splits need images (more images per class, or another --val-ratio)')


def _manifest(source: str, seed: int, val_ratio: float, max_items: Optional[int], listing: str) -> Dict[str, Any]:
    return dict(version=_MANIFEST_VERSION, source=source, seed=seed, val_ratio=val_ratio, max_items=max_items,
                items_sha256=hashlib.sha256(listing.encode()).hexdigest())


def _reusable(root: Path, manifest: Dict[str, Any]) -> Optional[List[str]]:
    """The classes of the split in ``root`` when it was made from what ``manifest`` describes, else None."""
    try:
        made = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    classes = made.pop('classes', None) if isinstance(made, dict) else None
    return classes if made == manifest and classes else None


def _write_manifest(folder: Path, manifest: Dict[str, Any], classes: Sequence[str]) -> None:
    (folder / MANIFEST).write_text(json.dumps(dict(manifest, classes=list(classes)), indent=2))


def _ensure_replaceable(root: Path) -> None:
    """A folder may be rebuilt only if it is a split made here (has a manifest) or empty."""
    if root.exists() and not (root / MANIFEST).is_file() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f'{root} exists and is not a split made by timm_kan (no {MANIFEST}); '
                        'choose another destination or remove it')


def _is_output(folder: Path) -> bool:
    """A folder a timm-kan command wrote (a run, an export, a split): never a class of the data around it."""
    return any((folder / name).exists() for name in (OUTPUT_MARKER, LOCK_FILE, MANIFEST))


def _candidate_classes(src: Path, warn: bool = True) -> Dict[str, List[Path]]:
    """Class folder name -> its image files by name: visible folders holding image files, outputs left out."""
    if not src.is_dir():
        raise DataError(f'data folder does not exist: {src}')
    found, skipped = {}, []
    for d in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith('.')):
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if _is_output(d):
            skipped.append(f'{d.name} (a timm-kan output)')
        elif not files:
            skipped.append(f'{d.name} (no images)')
        else:
            found[d.name] = files
    if skipped and warn:
        _logger.warning(f'{src}: not classes: {", ".join(skipped)}')
    return found


def _listing(candidates: Dict[str, List[Path]]) -> Dict[str, Dict[str, Any]]:
    """Per class: image count and a hash of the file names and sizes (what a resumed run compares)."""
    return {c: dict(count=len(files), sha256=hashlib.sha256(
        '\n'.join(f'{p.name}\t{p.stat().st_size}' for p in files).encode()).hexdigest())
        for c, files in candidates.items()}


def folder_manifest(src: Path) -> Dict[str, Any]:
    """What an image folder holds now, read without writing anything: per split and class, image count and a hash
    of the names and sizes."""
    if (src / 'train').is_dir() and (src / 'val').is_dir():
        return {split: _listing(_candidate_classes(src / split, warn=False)) for split in ('train', 'val')}
    return {'all': _listing(_candidate_classes(src, warn=False))}


def manifest_changes(before: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """What changed between two :func:`data_manifest` s, in words ('class bird added', "'cat': 50 -> 53 images")."""
    changes = []
    for split in sorted(set(before) | set(now)):
        old, new = before.get(split, {}), now.get(split, {})
        where = '' if split in ('all', 'files') else f'{split}/'
        changes += [f'class {where}{c} added' for c in sorted(set(new) - set(old))]
        changes += [f'class {where}{c} removed' for c in sorted(set(old) - set(new))]
        for c in sorted(set(old) & set(new)):
            if old[c]['count'] != new[c]['count']:
                changes.append(f'{where}{c}: {old[c]["count"]} -> {new[c]["count"]}')
            elif old[c].get('sha256') != new[c].get('sha256'):
                changes.append(f'{where}{c}: files renamed or rewritten')
    return changes


def _readable_classes(src: Path, candidates: Dict[str, List[Path]], min_classes: int = 2) -> Dict[str, List[Path]]:
    """The readable images of each class (unreadable ones counted and named per class); classes left with none
    are dropped; fewer than ``min_classes`` classes is an error."""
    from ..images import check_image

    readable, bad, skipped = {}, [], 0
    for name, files in candidates.items():
        reasons = {p: check_image(p) for p in files}
        failed = [f'{p.name} ({why.split(": ", 1)[-1]})' for p, why in reasons.items() if why]
        if failed:
            bad.append(f'{name}: {len(failed)} of {len(files)}, e.g. {failed[0]}')
            skipped += len(failed)
        if len(failed) < len(files):
            readable[name] = [p for p, why in reasons.items() if not why]
    if bad:
        total = sum(len(files) for files in candidates.values())
        _logger.warning(f'{src}: skipped {skipped} unreadable image(s) of {total} ({"; ".join(bad)})')
    if not candidates:
        raise DataError(
            f'no images in {src}: expected one sub-folder per class holding {"/".join(IMAGE_EXTENSIONS)} files')
    if len(readable) < min_classes:
        need = 'a classifier needs >= 2' if min_classes > 1 else 'validation needs images'
        raise DataError(f'{src} holds images of {len(readable)} class(es) ({", ".join(readable)}) once unreadable '
                        f'ones are left out; {need}')
    return readable


def _link_split(tmp: Path, split: str, files: Dict[str, List[Path]]) -> None:
    for name, paths in files.items():
        (tmp / split / name).mkdir(parents=True, exist_ok=True)
        for path in paths:
            os.symlink(path.resolve(), tmp / split / name / path.name)


def split_image_folder(src: Path, dst: Path, val_ratio: float, seed: int) -> List[str]:
    """Split a one-folder-per-class data set into ``dst/train`` and ``dst/val`` by links.

    Classes are the visible sub-folders holding at least one readable image (timm-kan outputs are never classes).
    Per class, files are sorted by name and ``val_ratio`` of them drawn with ``random.Random(seed)``, as the
    reference write-ups do; unreadable images are left out, counted and named per class. ``dst`` is reused when
    its manifest matches, rebuilt when it is an older split made here, and refused when it is anything else.
    ``dst/class_indices.json`` holds the class map.

    Returns:
        The class names, sorted (index = label).
    """
    src, dst = Path(src).expanduser().resolve(), Path(dst)
    check_val_ratio(val_ratio)
    check_placement(dst, 'split destination', [src])
    candidates = _candidate_classes(src)
    manifest = _manifest(str(src), seed, val_ratio, None, json.dumps(_listing(candidates), sort_keys=True))
    reused = _reusable(dst, manifest)
    if reused:
        return reused
    _ensure_replaceable(dst)
    readable = _readable_classes(src, candidates)
    classes = sorted(readable)
    files = [(p, label) for label, c in enumerate(classes) for p in readable[c]]
    is_val = _per_class_split([label for _, label in files], val_ratio, seed)
    _check_split_sizes(is_val, str(src), val_ratio)
    by_split: Dict[str, Dict[str, List[Path]]] = {'train': {c: [] for c in classes}, 'val': {c: [] for c in classes}}
    for (path, label), val in zip(files, is_val):  # one pass: a large folder is linked in linear time
        by_split['val' if val else 'train'][classes[label]].append(path)
    with atomic_dir(dst, 'split', whole=True) as tmp:
        for split, split_files in by_split.items():
            _link_split(tmp, split, split_files)
        write_class_map(tmp, classes)
        _write_manifest(tmp, manifest, classes)
    return classes


def prepare_arrays(name: str, load: Callable[[], Tuple[np.ndarray, np.ndarray, List[str]]], root: Path,
                   val_ratio: float, seed: int, max_items: Optional[int]) -> List[str]:
    """A bundled set's arrays (``load()``: images, labels, class names), ``max_items`` of them, split per class."""
    check_val_ratio(val_ratio)
    images, labels, classes = load()
    ids = _subset(len(labels), seed, max_items)
    images, labels = images[ids], labels[ids]
    manifest = _manifest(name, seed, val_ratio, max_items, hashlib.sha256(images.tobytes() + labels.tobytes())
                         .hexdigest())
    if _reusable(root, manifest):
        return classes
    _ensure_replaceable(root)
    is_val = np.array(_per_class_split(labels.tolist(), val_ratio, seed))
    _check_split_sizes(is_val.tolist(), name if max_items is None else f'{name} (--max-items {max_items})', val_ratio)
    with atomic_dir(root, 'split', whole=True) as tmp:
        _write_split(tmp, 'train', images[~is_val], labels[~is_val], classes, ids[~is_val])
        _write_split(tmp, 'val', images[is_val], labels[is_val], classes, ids[is_val])
        _write_manifest(tmp, manifest, classes)
    return classes


def _link_presplit(src: Path, dst: Path) -> List[str]:
    """A folder split already (``train/``, ``val/``) linked into ``dst`` with its unreadable images left out;
    validation is read with the training class map."""
    train, val = _candidate_classes(src / 'train'), _candidate_classes(src / 'val')
    manifest = _manifest(str(src.resolve()), 0, None, None,
                         json.dumps([_listing(train), _listing(val)], sort_keys=True))
    reused = _reusable(dst, manifest)
    if reused:
        return reused
    _ensure_replaceable(dst)
    train = _readable_classes(src / 'train', train)
    classes = sorted(train)
    val = _readable_classes(src / 'val', val, min_classes=1)
    unknown = sorted(c for c in val if c not in classes)
    if unknown:
        raise DataError(f'{src / "val"} has classes the training split lacks: {", ".join(unknown)} '
                        f'(training classes: {", ".join(classes)})')
    absent = [c for c in classes if not val.get(c)]
    if absent:
        _logger.warning(f'{src / "val"}: no validation images of class(es) {", ".join(absent)}')
    with atomic_dir(dst, 'split', whole=True) as tmp:
        _link_split(tmp, 'train', train)
        _link_split(tmp, 'val', val)
        _write_manifest(tmp, manifest, classes)
    return classes


def split_listing(root: Path) -> Dict[str, List[str]]:
    """A prepared split's image files ('train', 'val': paths relative to the split): every model of a run is
    trained and validated on exactly these."""
    return {split: sorted(str(p.relative_to(root / split)) for p in (root / split).rglob('*')
                          if p.suffix.lower() in IMAGE_EXTENSIONS) for split in ('train', 'val')}


def split_class_map(classes: Sequence[str]) -> Dict[str, int]:
    """The class-name -> index map both splits are read with (the training split's)."""
    return {c: i for i, c in enumerate(classes)}


def prepare_folder(src: Path, root: Path, val_ratio: float, seed: int) -> List[str]:
    """An image folder's split in ``root``: a folder that already has ``train/`` and ``val/`` sub-folders keeps
    that split (linked, its unreadable images left out; validation read with the training class map), any other
    is split here by ``seed``."""
    if (src / 'train').is_dir() and (src / 'val').is_dir():
        return _link_presplit(src, root)
    return split_image_folder(src, root, val_ratio, seed)

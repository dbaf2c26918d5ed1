"""Fashion-MNIST's four IDX files (60k training and 10k test 28x28 images), read and checked for size.

Debian's ``dataset-fashion-mnist`` package puts them in ``/usr/share/datasets/fashion-mnist``; any folder holding
them (gzipped or not) works. Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
Machine Learning Algorithms", 2017.
"""
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

from ..io import DataError

__all__ = ['FASHION_MNIST_DIR', 'FASHION_MNIST_CLASSES', 'read_fashion_mnist']

FASHION_MNIST_DIR = Path('/usr/share/datasets/fashion-mnist')
FASHION_MNIST_CLASSES = ('T-shirt_top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                         'Ankle_boot')
_IDX_FILES = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
              'val': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}


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

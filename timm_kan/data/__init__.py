"""Data for ``compare``, ``explain`` and ``split``: the data sources ``--data`` names (``sources``: one table,
``--data`` parsed once), the splits made from them (``split``) and Fashion-MNIST's IDX files (``fashion_mnist``).

A package of its own, not part of :mod:`timm_kan.comparison`: ``explain`` reads these splits too, and the
comparison draws explain pictures, so data below both keeps the package free of import circles.
"""

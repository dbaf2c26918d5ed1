"""The comparison workflow behind ``timm-kan compare``: train several models under one recipe and compare them.

``run_compare(CompareConfig(...))`` is the Python form of the command. Modules: ``config`` (the options, each
declared once with its flag, and the recipes), ``run`` (the run: output folder, resume, seeds, parameter
matching, explain pictures), ``trainer`` (one model's training from timm's parts), ``param_match`` (the hidden
width for a parameter budget) and ``results`` (table, results.json/.csv, plots). The data sources are
:mod:`timm_kan.data`.
"""
from .config import CompareConfig
from .run import run_compare

"""See what the KAN layers learned: edge functions over the data, importance, pruning, symbolic fits.

``record_blocks`` measures a model on real images; ``explain_model`` writes the pictures and ``importance.json``;
``prune`` returns a new model without its least important hidden units; ``fit_symbolic`` names a curve.
The edge functions themselves are methods of the layers (``edge_functions``, ``edge_contributions``,
``GroupRational.group_functions``).
"""
from .prune import prune, units_to_keep
from .records import BlockRecord, LayerRecord, edge_importance, record_blocks
from .run import explain_model, finetune, load_images, summary_table, top1
from .symbolic import SYMBOLIC_LIBRARY, SymbolicFit, fit_symbolic

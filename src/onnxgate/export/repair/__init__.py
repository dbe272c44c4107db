"""The repair rung: export-hostile patterns and their numerically equivalent, export-friendly replacements.

The catalogue (``catalogue.py``) is data: each ``Repair`` names a pattern, how to find it in a model (which modules),
what replaces it (a small, tested torch module in ``modules.py``) and the exporter error or frozen dim it removes.
The ladder (``export/ladder.py``) tries the repair rung only after the plain rungs failed or froze a dim. A repair
is applied inside the export attempt's worker process — to the worker's own copy of the model (the fork's copy, or a
deep copy where there is no fork) — never to the model the user passed; the repaired export is then verified against
the original, unpatched model like any other attempt, so a replacement that computed something else could never win.
"""

from .catalogue import CATALOGUE, Repair, applicable, apply_repairs

__all__ = ["CATALOGUE", "Repair", "applicable", "apply_repairs"]

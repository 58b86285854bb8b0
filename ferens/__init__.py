"""ferens: facial-expression recognition on FER2013 — members, ensembles, error taxonomy.

The public API is re-exported here and imported lazily, so ``ferens ensemble`` and
``ferens report`` never pay for importing torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "CLASS_NAMES": "ferens.classes", "NUM_CLASSES": "ferens.classes",
    "FerensError": "ferens.errors",
    "TrainConfig": "ferens.config",
    "FerDataset": "ferens.data", "load_fer2013": "ferens.data",
    "read_ferplus_votes": "ferens.data",
    "create_member_model": "ferens.models",
    "Predictions": "ferens.predictions", "Run": "ferens.predictions",
    "load_predictions": "ferens.predictions", "load_run": "ferens.predictions",
    "train_member": "ferens.train",
    "build_ensemble": "ferens.ensemble", "combine": "ferens.ensemble",
    "adjust_run": "ferens.adjust",
    "write_report": "ferens.report",
    "load_model": "ferens.shipped", "ExpressionModel": "ferens.shipped",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ferens' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)

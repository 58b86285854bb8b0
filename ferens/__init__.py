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
    "FerDataset": "ferens.data.fer2013", "load_fer2013": "ferens.data.fer2013",
    "read_ferplus_votes": "ferens.data.fer2013",
    "create_member_model": "ferens.models.factory",
    "Predictions": "ferens.runs", "Run": "ferens.runs",
    "load_predictions": "ferens.runs", "load_run": "ferens.runs",
    "train_member": "ferens.train.member",
    "build_ensemble": "ferens.combine.ensemble",
    "adjust_run": "ferens.combine.adjust",
    "write_report": "ferens.report.build",
    "load_model": "ferens.deploy.shipped", "ExpressionModel": "ferens.deploy.shipped",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ferens' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)

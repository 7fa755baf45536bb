"""resalign: measure Residual Alignment in trained ResNets.

The path data takes through the package, left to right::

    data -> models -> training -> store -> jacobians / spectra -> metrics
         -> measure -> plots -> chapters

Most readers need three calls::

    from resalign import Config, trained, measure
    run = trained(Config(dataset="mnist5k", width=64, depth=8))
    report = measure(run.model, run.data.x_train[:100], run.data.y_train[:100])
"""

from importlib import import_module

_LAZY = {
    "Config": "store",
    "Store": "store",
    "trained": "store",
    "Report": "measurement",
    "measure": "measurement",
    "measure_trained": "measurement",
}

__all__ = ["Config", "Report", "Store", "measure", "measure_trained", "trained"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """Import the public names on first use, so ``import resalign`` is cheap."""
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'resalign' has no attribute {name!r}")

"""Committee member models. Each is one module holding all M members.

The contract every model meets (shapes [M, N, 3] -> [M, B], units, invariances, member
state layout) is written once in :mod:`advsample.models.base` and checked by
:func:`check_model`. Stacked models hold the member axis first on every parameter
(``MLPCommittee``, ``SchNetCommittee``); :class:`MemberList` turns M independent modules
into one model (``MACECommittee`` in :mod:`advsample.models.mace`, with the ``mace``
extra). :data:`MODELS` names them for checkpoints.
"""
from .base import CommitteeModel, FixedGeometry, MemberList, ModelContractError, check_model
from .mlp import MLPCommittee
from .schnet import SchNetCommittee



class _Registry(dict):
    """Model classes by name; optional ones (their extra's import) load on first lookup."""

    lazy = {"MACECommittee": "advsample.models.mace"}

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or name in self.lazy

    def __missing__(self, name):
        if name not in self.lazy:
            raise KeyError(name)
        import importlib

        module = importlib.import_module(self.lazy[name])  # ImportError names the extra to install
        self[name] = getattr(module, name)
        return self[name]


MODELS = _Registry(MLPCommittee=MLPCommittee, SchNetCommittee=SchNetCommittee)


def register_model(cls):
    """Make a model class loadable from checkpoints by its class name."""
    MODELS[cls.__name__] = cls
    return cls


def __getattr__(name):
    # the MACE models import mace-torch (optional extra) only when asked for
    if name in MODELS.lazy:
        return MODELS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CommitteeModel", "FixedGeometry", "MLPCommittee", "MODELS", "MemberList", "ModelContractError", "SchNetCommittee",
    "check_model", "register_model",
]

"""Committee member models. Each is one module holding all M members.

The contract every model meets (shapes [M, N, 3] -> [M, B], units, invariances, member
state layout) is written once in :mod:`advsample.models.base` and checked by
:func:`check_model`. Stacked models hold the member axis first on every parameter
(``MLPCommittee``, ``SchNetCommittee``); :class:`MemberList` turns M independent modules
into one model (``MACECommittee`` in :mod:`advsample.models.mace`, with the ``mace``
extra). :data:`MODELS` names them for checkpoints.
"""
from .base import MODELS, CommitteeModel, FixedGeometry, MemberList, ModelContractError, check_model, register_model
from .mlp import MLPCommittee
from .schnet import SchNetCommittee

MODELS.update(MLPCommittee=MLPCommittee, SchNetCommittee=SchNetCommittee)


def __getattr__(name):
    # the MACE models import mace-torch (optional extra) only when asked for
    if name in MODELS.lazy:
        return MODELS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CommitteeModel", "FixedGeometry", "MLPCommittee", "MODELS", "MemberList", "ModelContractError", "SchNetCommittee",
    "check_model", "register_model",
]

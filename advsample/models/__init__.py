"""Committee member models. Each is one module holding all M members (member axis first).

A model maps a :class:`~advsample.structures.Batch` to raw energies [M, B] and gives
``config()`` (keyword arguments that rebuild it); :data:`MODELS` names them for checkpoints.
"""
from .mlp import MLPCommittee
from .schnet import SchNetCommittee

MODELS = {"MLPCommittee": MLPCommittee}
MODELS["SchNetCommittee"] = SchNetCommittee


def register_model(cls):
    """Make a model class loadable from checkpoints by its class name."""
    MODELS[cls.__name__] = cls
    return cls


__all__ = ["MLPCommittee", "MODELS", "register_model"]

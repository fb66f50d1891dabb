"""The committee as an ASE calculator, for ASE MD, optimizers and NEB."""
from __future__ import annotations

from ase.calculators.calculator import Calculator, all_changes

from .committee import Committee
from .structures import Batch


class CommitteeCalculator(Calculator):
    """ASE calculator returning the committee mean and spread.

    Results: ``energy`` (committee mean), ``forces`` [N, 3] (mean), ``energy_std`` (std over
    members), ``forces_std`` [N] (per-atom std over members, averaged over x, y, z),
    ``energies`` [M] (each member's energy).

    Like ASE's own calculators it returns unconstrained forces for any ASE constraint
    (``FixAtoms``, ``FixInternals``, ...): the model sees a constraint-free copy of the
    atoms, and ASE's dynamics and optimizers apply the constraints themselves.
    """

    implemented_properties = ["energy", "forces", "energy_std", "forces_std", "energies"]

    def __init__(self, committee: Committee, **kwargs):
        super().__init__(**kwargs)
        self.committee = committee

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        free = self.atoms.copy()
        free.constraints = []
        out = self.committee(Batch.from_atoms([free]), forces=True)
        self.results = {
            "energy": float(out.energy_mean[0]),
            "forces": out.forces_mean.detach().cpu().numpy().astype(float),
            "energy_std": float(out.energy_variance[0].sqrt()),
            "forces_std": out.force_variance_per_atom.sqrt().detach().cpu().numpy().astype(float),
            "energies": out.energies[:, 0].detach().cpu().numpy().astype(float),
        }

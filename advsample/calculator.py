"""The committee as an ASE calculator, for ASE MD, optimizers, NEB and cell relaxation."""
from __future__ import annotations

import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .calibration import calibration_of
from .committee import Committee
from .structures import Batch, strained, voigt_stress


class CommitteeCalculator(Calculator):
    """ASE calculator returning the committee mean and spread.

    Results: ``energy`` (committee mean; ``free_energy`` the same), ``forces`` [N, 3] (mean), ``energy_std`` (std over
    members), ``forces_std`` [N] (per-atom std over members, averaged over x, y, z),
    ``energies`` [M] (each member's energy). For periodic structures, on request:
    ``stress`` [6] (eV/Å³, Voigt order xx yy zz yz xz xy, the member mean), ``stress_std``
    [6] (std over members) and ``stresses`` [M, 6], each member's
    σ = (1/V) ∂E/∂ε, the derivative of its energy under a homogeneous strain ε of cell and
    positions (ASE's sign convention, as in ``ase.calculators.fd``), by autograd.

    A committee calibrated with :func:`advsample.calibration.calibrate` also gives
    ``energy_std_calibrated`` and ``forces_std_calibrated`` [N] (calibrated standard deviations
    a·σᵇ of the energy and of each force component of an atom) and ``energy_interval`` and
    ``forces_interval`` [N] (conformal error bars: |error| ≤ interval at the calibration's stated
    coverage, per energy and per force component of each atom); ``energy_std``/``forces_std`` stay raw.

    Like ASE's own calculators it returns unconstrained forces for any ASE constraint
    (``FixAtoms``, ``FixInternals``, ...): the model sees a constraint-free copy of the
    atoms, and ASE's dynamics and optimizers apply the constraints themselves.
    """

    implemented_properties = ["energy", "free_energy", "forces", "energy_std", "forces_std", "energies", "stress", "stress_std",
                              "stresses", "energy_std_calibrated", "forces_std_calibrated", "energy_interval", "forces_interval"]

    def __init__(self, committee: Committee, **kwargs):
        super().__init__(**kwargs)
        self.committee = committee

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        free = self.atoms.copy()
        free.constraints = []
        batch = Batch.from_atoms([free])
        wants_stress = any(p in properties for p in ("stress", "stress_std", "stresses"))
        if wants_stress:
            if not free.pbc.any():
                raise PropertyNotImplementedError("stress needs a periodic structure (atoms.pbc has no True)")
            out, stresses = self._with_stress(batch)
        else:
            out = self.committee(batch, forces=True)
        self.results = {
            "energy": float(out.energy_mean[0]),
            "free_energy": float(out.energy_mean[0]),  # no electronic entropy: what force_consistent asks for
            "forces": out.forces_mean.detach().cpu().numpy().astype(float),
            "energy_std": float(out.energy_variance[0].sqrt()),
            "forces_std": out.force_variance_per_atom.sqrt().detach().cpu().numpy().astype(float),
            "energies": out.energies[:, 0].detach().cpu().numpy().astype(float),
        }
        calibration = calibration_of(self.committee)
        if calibration is not None:  # calibrated error bars; the raw energy_std / forces_std stay as they are
            energy_std, forces_std = self.results["energy_std"], self.results["forces_std"]
            self.results.update(energy_std_calibrated=float(calibration.energy_sigma(energy_std)),
                                forces_std_calibrated=calibration.force_sigma(forces_std),
                                energy_interval=float(calibration.energy_interval(energy_std)),
                                forces_interval=calibration.force_interval(forces_std))
        if wants_stress:
            self.results.update(stress=stresses.mean(0), stress_std=stresses.std(0), stresses=stresses)

    def _with_stress(self, batch: Batch):
        """The committee output and each member's stress [M, 6] (eV/Å³) by autograd through :func:`strained`."""
        committee = self.committee
        batch = batch.to(committee.device, committee.dtype)
        strain, strained_batch, positions = strained(batch, batch.positions.detach())
        out = committee(strained_batch, forces=True, create_graph=True, positions=positions)
        stresses = [voigt_stress(torch.autograd.grad(out.energies[m, 0], strain, retain_graph=True)[0], batch.cells)[0]
                    for m in range(committee.n_members)]
        out.forces = out.forces.detach()
        out.energies = out.energies.detach()
        return out, torch.stack(stresses).detach().cpu().numpy().astype(float)

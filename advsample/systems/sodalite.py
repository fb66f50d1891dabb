"""Water in silica sodalite with periodic GFN1-xTB: a host–guest framework, the paper's own domain.

The framework is all-silica sodalite (SOD) built with ASE from the IZA Database of Zeolite
Structures' coordinates: space group Im-3m (229), a = 8.965 Å, T at (1/4, 0, 1/2), O at
(0.146, 0.146, 1/2): 12 Si and 24 O in the cubic cell, every Si bonded to four O at
1.607 Å. One H2O sits at the centre of the β-cage at the origin (39 atoms, periodic in 3D).
Reference: periodic GFN1-xTB (tblite, eV, eV/Å; 1.3–2.3 s per call on one core here, so
this system is not run in CI).

* Initial data: the cell with the framework rattled (Gaussian, ``rattle_A``) and the
  water rigidly rotated at random and moved up to ``guest_shift_A`` from the cage centre.
* Test set: the same at twice the amplitudes (``info["subset"] = "thermal"``) and the
  water pushed 1–2 Å from the centre towards a six-ring window (``"window"``), where
  the committee has seen nothing.
* Metrics: committee-MD stability (:func:`~advsample.metrics.md_stability`: stable
  fraction, mean time to failure) at ``stability_temperature_K``, energies checked against
  GFN1-xTB on 3 frames per run; the guest-window force error.
"""
from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.build import molecule

from ..committee import Committee, default_device
from ..label import CalculatorSpec, label_structures
from ..structures import labels_of
from . import System
from .zeolites import host_guest_settings, silica_sodalite

SPECIES = (1, 8, 14)
REFERENCE = CalculatorSpec("advsample.molecules:xtb_calculator", {"method": "GFN1-xTB"})


def window_direction() -> np.ndarray:
    """Unit vector from the cage centre at the origin to the centre of a six-ring window ([111])."""
    return np.ones(3) / np.sqrt(3.0)


def water_in_sodalite(shift_A: np.ndarray | None = None, rotation_seed: int | None = None) -> Atoms:
    """Silica sodalite with one H2O at the cage centre (+ ``shift_A``, Å), optionally randomly rotated."""
    host = silica_sodalite()
    water = molecule("H2O")
    water.positions -= water.get_center_of_mass()
    if rotation_seed is not None:
        rng = np.random.default_rng(rotation_seed)
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        w, x, y, z = q
        rotation = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                             [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                             [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
        water.positions = water.positions @ rotation.T
    if shift_A is not None:
        water.positions += np.asarray(shift_A, dtype=float)
    host += water
    host.wrap()
    return host


def frames(n: int, rattle_A: float, guest_shift_A: float, seed: int, window_A: tuple[float, float] | None = None
           ) -> list[Atoms]:
    """``n`` unlabeled cells: framework rattled by ``rattle_A``, water rotated at random and moved
    up to ``guest_shift_A`` (Å) in a random direction, or (``window_A``) along the window direction."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        if window_A is not None:
            shift = rng.uniform(*window_A) * window_direction()
        else:
            direction = rng.normal(size=3)
            shift = rng.uniform(0, guest_shift_A) * direction / np.linalg.norm(direction)
        atoms = water_in_sodalite(shift, rotation_seed=int(rng.integers(2**31)))
        atoms.positions += rng.normal(scale=rattle_A, size=atoms.positions.shape)
        out.append(atoms)
    return out


def _label(atoms_list: list[Atoms], **info) -> list[Atoms]:
    result = label_structures(atoms_list, REFERENCE, progress=False)
    if result.failures:
        raise RuntimeError(f"GFN1-xTB failed on {len(result.failures)} sodalite frame(s): "
                           f"{result.failures[0]['reason']}")
    for atoms in result.labeled:
        atoms.info.update(info)
    return result.labeled


def sodalite(
    smoke: bool = False,
    n_initial: int | None = None,
    n_test: int | None = None,
    rattle_A: float = 0.04,
    guest_shift_A: float = 0.4,
    stability_temperature_K: float = 600.0,
    stability_runs: int | None = None,
    stability_steps: int | None = None,
    stability_timestep_fs: float = 0.5,
    energy_tolerance_eV: float = 0.5,
    n_members: int | None = None,
    n_features: int | None = None,
    epochs: int | None = None,
    budget: int | None = None,
    energy_ceiling_eV: float = 10.0,
    kT: float = 0.2,
    data_seed: int = 0,
) -> System:
    """Water in silica sodalite with GFN1-xTB labels; ``smoke``: a tiny version (still ~20 xTB calls).

    ``n_initial`` / ``n_test``: labeled cells (2 s each). Stability: ``stability_runs``
    committee-MD runs of ``stability_steps`` × ``stability_timestep_fs`` at
    ``stability_temperature_K`` from the initial cells, failing on a geometric failure or
    when the committee energy is off GFN1-xTB by more than ``energy_tolerance_eV``.
    ``kT`` (eV) of the objective; ``energy_ceiling_eV``: the selection window above the
    training minimum (at 600 K the 117 coordinates of the cell hold ~3 eV of potential energy
    on average, equipartition: a 3 eV window rejected most MD frames).
    (Over 80 lines with this docstring: the body is one System's settings, a line each.)
    """
    pick = lambda value, full, small: value if value is not None else (small if smoke else full)  # noqa: E731
    n_initial = pick(n_initial, 24, 6)
    n_test = pick(n_test, 16, 4)
    stability_runs = pick(stability_runs, 4, 1)
    stability_steps = pick(stability_steps, 400, 10)
    n_members = pick(n_members, 4, 2)
    n_features = pick(n_features, 32, 8)
    epochs = pick(epochs, 300, 10)
    budget = pick(budget, 8, 2)

    initial = _label(frames(n_initial, rattle_A, guest_shift_A, seed=data_seed))
    thermal = _label(frames(n_test - n_test // 2, 2 * rattle_A, 2 * guest_shift_A, seed=data_seed + 1),
                     subset="thermal")
    window = _label(frames(n_test // 2, rattle_A, 0.0, seed=data_seed + 2, window_A=(1.0, 2.0)), subset="window")
    stability_starts = [a.copy() for a in initial]

    def make_committee(seed: int) -> Committee:
        from ..models.schnet import SchNetCommittee

        model = SchNetCommittee(n_members=n_members, species=SPECIES, n_features=n_features,
                                n_interactions=1 if smoke else 2, cutoff=4.5, seed=seed)
        return Committee(model).to(default_device())

    def evaluate(committee: Committee) -> dict:
        from ..metrics import md_stability, stability_metrics
        from ..molecules import xtb_calculator

        stability = md_stability(
            committee, stability_starts, temperature_K=stability_temperature_K, n_runs=stability_runs,
            n_steps=stability_steps, timestep_fs=stability_timestep_fs, reference=xtb_calculator(method="GFN1-xTB"),
            energy_tolerance_eV=energy_tolerance_eV, n_check_frames=3, seed=data_seed,
        )
        out = stability_metrics(stability)
        _, window_forces = labels_of(window)
        out["window_force_mae"] = float(np.abs(committee.predict(window)["forces_mean"] - window_forces).mean())
        return out

    return System(
        name="sodalite",
        reference=REFERENCE,
        initial=initial,
        test=thermal + window,
        make_committee=make_committee,
        energy_unit="eV",
        kT=kT,
        uncertainty="forces",
        evaluate=evaluate,
        # minibatches of 6 (200 full-batch steps reached only 1.4 eV/Å)
        **host_guest_settings(smoke, epochs, budget, energy_ceiling_eV, stability_temperature_K,
                              stability_timestep_fs, batch_size=6, window="water towards a six-ring window"),
    )


"""Au adatom on Al(100) with EMT: a periodic slab, a hollow-to-hollow hop, NN-MD stability.

The system of ASE's NEB tutorial: ``fcc100('Al', size=(2, 2, 3))`` with an Au adatom
1.7 Å above a hollow site, 4 Å of vacuum above and below, periodic in x and y, the
bottom two Al layers held by ``FixAtoms``. Reference: ASE's EMT (eV, eV/Å).

* Initial data: frames of a short EMT Langevin MD with the adatom in one hollow.
* Test set: the EMT NEB path of the hop to the neighbouring hollow
  (``info["subset"] = "hop_path"``) and frames of an EMT MD at the stability
  temperature (``"thermal"``), started in both hollows.
* Metrics: the committee's hop barrier (ASE NEB on :class:`CommitteeCalculator`, the
  endpoints relaxed with the committee) and its error against EMT's (0.374 eV with 3
  images; ``barrier_error_eV`` is the absolute error); committee-MD stability (:func:`~advsample.metrics.md_stability`: stable
  fraction, mean time to failure) at ``stability_temperature_K``, energies checked against EMT.
  ``evaluate`` also returns the NEB profiles (``neb_profile_eV``, ``neb_reference_profile_eV``,
  energies relative to the first image, at ``neb_hop_fraction``) and ``stability`` (the input
  of :func:`~advsample.metrics.survival_curve`).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from ase import Atoms, units
from ase.build import add_adsorbate, fcc100
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.optimize import BFGS

from ..calculator import CommitteeCalculator
from ..committee import Committee, default_device
from ..label import CalculatorSpec
from ..select import SelectionConfig
from ..structures import labeled
from ..train import TrainConfig
from . import Metric, System

SPECIES = (13, 79)


def adatom_slab() -> Atoms:
    """The unrelaxed slab: Al(100) 2×2×3, Au 1.7 Å above a hollow, bottom two layers fixed."""
    slab = fcc100("Al", size=(2, 2, 3))
    add_adsorbate(slab, "Au", 1.7, "hollow")
    slab.center(axis=2, vacuum=4.0)
    slab.set_constraint(FixAtoms(mask=[atom.tag > 1 for atom in slab]))
    slab.info.pop("adsorbate_info", None)  # a dict extxyz cannot write
    return slab


def relaxed(atoms: Atoms, calculator, fmax: float = 0.05, steps: int = 200) -> Atoms:
    """A copy of ``atoms`` relaxed with BFGS on ``calculator`` (constraints kept), without its calculator."""
    atoms = atoms.copy()
    atoms.calc = calculator
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)
    atoms.calc = None
    return atoms


def hop_endpoints(calculator=None, fmax: float = 0.05, steps: int = 200) -> tuple[Atoms, Atoms]:
    """The adatom relaxed in its hollow and in the next hollow along x (half a cell away)."""
    calculator = calculator if calculator is not None else EMT()
    start = relaxed(adatom_slab(), calculator, fmax, steps)
    moved = start.copy()
    moved.positions[-1, 0] += moved.cell[0, 0] / 2
    return start, relaxed(moved, calculator, fmax, steps)


def neb_path(start: Atoms, end: Atoms, calculator_factory, n_images: int = 3, fmax: float = 0.05,
             steps: int = 300) -> tuple[list[Atoms], bool]:
    """NEB images [n_images + 2] (ASE, improved tangent) between two endpoints; and whether it converged.

    ``calculator_factory()`` gives each image its calculator (endpoints included, for their energies).
    """
    from ase.mep import NEB

    images = [start.copy()] + [start.copy() for _ in range(n_images)] + [end.copy()]
    for image in images:
        image.calc = calculator_factory()
    neb = NEB(images, method="improvedtangent")
    neb.interpolate()
    converged = bool(BFGS(neb, logfile=None).run(fmax=fmax, steps=steps))
    return images, converged


def path_barrier(images: Sequence[Atoms]) -> float:
    """E_max − E_first of a band's images (each with its calculator): the forward barrier."""
    energies = [image.get_potential_energy() for image in images]
    return float(max(energies) - energies[0])


def hop_fraction(images: Sequence[Atoms], start: Atoms, end: Atoms) -> list[float]:
    """[n_images] the adatom's progress along x from ``start`` (0) to ``end`` (1)."""
    x0, x1 = start.positions[-1, 0], end.positions[-1, 0]
    return [float((image.positions[-1, 0] - x0) / (x1 - x0)) for image in images]


_relaxed, _barrier, _hop_fraction = relaxed, path_barrier, hop_fraction  # the names they had when private


def emt_md(start: Atoms, n_frames: int, temperature_K: float, interval: int, seed: int,
           timestep_fs: float = 2.0) -> list[Atoms]:
    """``n_frames`` EMT-labeled frames, one every ``interval`` steps of a Langevin MD from ``start``."""
    atoms = start.copy()
    atoms.calc = EMT()
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=rng)
    dynamics = Langevin(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature_K, friction=0.02,
                        fixcm=False, rng=rng)
    frames = []
    for _ in range(n_frames):
        dynamics.run(interval)
        frame = atoms.copy()
        frame.calc = None
        frames.append(labeled(frame, atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)))
    return frames


def adatom(
    smoke: bool = False,
    n_initial: int | None = None,
    md_temperature_K: float = 300.0,
    stability_temperature_K: float = 450.0,
    stability_runs: int | None = None,
    stability_steps: int | None = None,
    stability_timestep_fs: float = 2.0,
    energy_tolerance_eV: float = 0.2,
    n_members: int | None = None,
    n_features: int | None = None,
    epochs: int | None = None,
    budget: int | None = None,
    neb_steps: int | None = None,
    energy_ceiling_eV: float = 1.5,
    kT: float = 0.2,
    data_seed: int = 0,
) -> System:
    """The Au/Al(100) adatom system; ``smoke``: a tiny version (seconds) for tests.

    ``n_initial``: initial frames of EMT MD at ``md_temperature_K`` in one hollow.
    Stability: ``stability_runs`` committee-MD runs of ``stability_steps`` ×
    ``stability_timestep_fs`` at ``stability_temperature_K`` from the initial frames,
    failing when the committee energy is off EMT by more than ``energy_tolerance_eV``
    on 5 frames per run (or on a geometric failure). ``neb_steps``: BFGS steps of each
    committee relaxation and of its NEB. ``kT`` (eV) of the objective. ``energy_ceiling_eV``:
    the selection window above the training minimum (committee MD otherwise picks frames
    tens of eV up, where atoms collide, and training on them ruins the committee).
    """
    pick = lambda value, full, small: value if value is not None else (small if smoke else full)  # noqa: E731
    n_initial = pick(n_initial, 20, 6)
    stability_runs = pick(stability_runs, 8, 2)
    stability_steps = pick(stability_steps, 500, 10)
    n_members = pick(n_members, 4, 2)
    n_features = pick(n_features, 32, 8)
    epochs = pick(epochs, 600, 15)
    budget = pick(budget, 10, 2)
    n_thermal = 2 if smoke else 12
    neb_steps = pick(neb_steps, 300, 20)

    start, end = hop_endpoints()
    path, _ = neb_path(start, end, EMT, n_images=3)
    emt_barrier = path_barrier(path)
    emt_profile = [float(image.get_potential_energy() - path[0].get_potential_energy()) for image in path]
    emt_fraction = hop_fraction(path, start, end)
    hop_path = [labeled(image, image.get_potential_energy(), image.get_forces(apply_constraint=False),
                        subset="hop_path", image=k) for k, image in enumerate(path)]
    for image in path:
        image.calc = None
    initial = emt_md(start, n_initial, md_temperature_K, interval=5, seed=data_seed)
    thermal = [*emt_md(start, (n_thermal + 1) // 2, stability_temperature_K, interval=10, seed=data_seed + 1),
               *emt_md(end, n_thermal // 2, stability_temperature_K, interval=10, seed=data_seed + 2)]
    for frame in thermal:
        frame.info["subset"] = "thermal"
    stability_starts = [a.copy() for a in initial]

    def make_committee(seed: int) -> Committee:
        from ..models.schnet import SchNetCommittee

        model = SchNetCommittee(n_members=n_members, species=SPECIES, n_features=n_features,
                                n_interactions=1 if smoke else 2, cutoff=5.0, seed=seed)
        return Committee(model).to(default_device())

    def evaluate(committee: Committee) -> dict:
        from ..metrics import md_stability, stability_metrics

        calculator = lambda: CommitteeCalculator(committee)  # noqa: E731
        out: dict = {"barrier_reference_eV": emt_barrier}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = relaxed(start, calculator(), steps=neb_steps)
                b = relaxed(end, calculator(), steps=neb_steps)
                images, converged = neb_path(a, b, calculator, n_images=3, steps=neb_steps)
            profile = [image.get_potential_energy() for image in images]
            barrier = path_barrier(images)
            out.update(barrier_eV=barrier, barrier_error_eV=abs(barrier - emt_barrier),
                       barrier_note="" if converged else f"NEB not converged in {neb_steps} steps",
                       neb_profile_eV=[e - profile[0] for e in profile],
                       neb_hop_fraction=hop_fraction(images, a, b))
        except ValueError as error:  # the committee drove two atoms together: a result too
            out.update(barrier_eV=float("nan"), barrier_error_eV=float("nan"), barrier_note=str(error))
        out["neb_reference_profile_eV"] = emt_profile
        out["neb_reference_hop_fraction"] = emt_fraction
        stability = md_stability(
            committee, stability_starts, temperature_K=stability_temperature_K, n_runs=stability_runs,
            n_steps=stability_steps, timestep_fs=stability_timestep_fs, reference=EMT(),
            energy_tolerance_eV=energy_tolerance_eV, n_check_frames=5, seed=data_seed,
        )
        out.update(stability_metrics(stability))
        return out

    return System(
        name="adatom",
        reference=CalculatorSpec("ase.calculators.emt:EMT", {}),
        initial=initial,
        test=hop_path + thermal,
        make_committee=make_committee,
        energy_unit="eV",
        kT=kT,
        uncertainty="forces",
        train=TrainConfig(epochs=epochs, patience=max(epochs // 4, 5), lr_patience=max(epochs // 10, 3),
                          progress=False),
        selection=SelectionConfig(budget=budget, min_distance=0.02, energy_ceiling=energy_ceiling_eV),
        attack={"n_steps": 10 if smoke else 60, "learning_rate": 0.02, "snapshot_every": 5,
                "n_seeds": 4 if smoke else 10, "min_distance": 1.5},
        md={"temperature_K": stability_temperature_K, "timestep_fs": 2.0, "n_steps": 20 if smoke else 200,
            "interval": 5, "n_seeds": 4 if smoke else 8},
        displacement=0.1,
        validation_fraction=0.0 if smoke else 0.1,
        metrics=[
            Metric("barrier_error_eV", "eV", label="|hop barrier error| (committee NEB vs EMT)"),
            Metric("md_stable_fraction", "", lower_is_better=False, label=f"stable {stability_temperature_K:g} K MD runs",
                   kind="thermal"),
            Metric("mean_time_to_failure_fs", "fs", lower_is_better=False, label="mean time to MD failure",
                   kind="thermal"),
        ],
        evaluate=evaluate,
    )

"""Ethanol with GFN2-xTB labels: one conformer basin in training, the whole H–O–C–C torsion in the test.

* :func:`ethanol` — the :class:`~advsample.systems.System` (``get_system("ethanol")``):
  100 anti-conformer 300 K MD frames (initial), test = the relaxed torsion scan
  (``"torsion_scan"``) + thermal frames near anti (``"anti_md_test"``) and both gauche
  minima (``"gauche_md"``), a SchNet committee (H, C, O), kT = 0.1 eV, a 0.5 eV window,
  10 labels per round; metrics on the scan (force MAE, energy-profile MAE, anti→gauche
  barrier error) and the 1000 K committee-MD stable fraction.
* :func:`torsion_indices`, :func:`torsion_angle`, :func:`ethanol_minimum`,
  :func:`torsion_scan`, :func:`thermal_frames`, :func:`ethanol_dataset`,
  :func:`torsion_profile_errors` — the ethanol pieces, built on the generic helpers of
  :mod:`advsample.molecules`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from ..committee import Committee, default_device
from ..label import CalculatorSpec
from ..metrics import md_stability, test_errors
from ..models.schnet import SchNetCommittee
from ..molecules import (KCAL_PER_MOL, basin_frames, dihedral, dihedral_scan, profile_barrier, relabel_xtb, relax,
                         xtb_calculator)
from ..select import SelectionConfig
from ..train import TrainConfig
from . import Metric, System


# -- ethanol: one conformer basin in training, the whole H–O–C–C torsion in the test --------
# GFN2-xTB (measured with this code): relaxed scan of the H–O–C–C torsion from the anti
# minimum (180°): a barrier of ≈ 0.04 eV near 130°, the gauche minima (±60°) ≈ 0.07 eV
# *below* anti, the cis point (0°) ≈ 0.05 eV above gauche. (xTB on ethanol: a few ms per
# call with OMP_NUM_THREADS=1; with OpenMP threads on a shared machine ~1 s.)
ETHANOL_NAME = "CH3CH2OH"  # in ase.collections.g2; built in the anti (trans) conformer
ANTI_WINDOW_DEG = 40.0  # training frames: |φ| ≥ 180 − this (the anti basin)
GAUCHE_WINDOW_DEG = 40.0  # gauche test frames: |φ ∓ 60| ≤ this


def torsion_indices(atoms: Atoms) -> tuple[int, int, int, int]:
    """(H, O, C_α, C_β) of ethanol's hydroxyl torsion, found from the geometry (any atom order)."""
    symbols = atoms.get_chemical_symbols()
    if sorted(symbols) != sorted("CCOHHHHHH"):
        raise ValueError(f"expected ethanol C2H6O, got {atoms.get_chemical_formula()}")
    d = atoms.get_all_distances()
    oxygen = symbols.index("O")
    carbons = [i for i, s in enumerate(symbols) if s == "C"]
    alpha = min(carbons, key=lambda c: d[oxygen, c])
    beta = next(c for c in carbons if c != alpha)
    hydrogens = [i for i, s in enumerate(symbols) if s == "H"]
    hydroxyl = min(hydrogens, key=lambda h: d[oxygen, h])
    return hydroxyl, oxygen, alpha, beta


def torsion_angle(atoms: Atoms) -> float:
    """H–O–C–C dihedral of ethanol in degrees, in (−180, 180]: anti ≈ ±180, gauche ≈ ±60."""
    return dihedral(atoms, torsion_indices(atoms))


def torsion_angles(atoms_list: Sequence[Atoms]) -> np.ndarray:
    """[B] :func:`torsion_angle` of every structure (degrees)."""
    return np.array([torsion_angle(a) for a in atoms_list], dtype=float)


def ethanol_minimum(calculator=None, fmax: float = 0.01, steps: int = 300, torsion_deg: float | None = None) -> Atoms:
    """Ethanol relaxed with ``calculator`` (default xTB): anti from ``ase.build.molecule``, or the
    minimum nearest ``torsion_deg`` (e.g. 60 for gauche) when given (started there, then relaxed freely)."""
    from ase.build import molecule

    calculator = calculator if calculator is not None else xtb_calculator()
    atoms = molecule(ETHANOL_NAME)
    if torsion_deg is not None:
        h, o, ca, cb = torsion_indices(atoms)
        atoms.set_dihedral(cb, ca, o, h, torsion_deg % 360.0, indices=[h])
    relax(atoms, calculator, fmax, steps, f"ethanol minimum (start φ={torsion_deg})")
    atoms.calc = None
    return atoms


def torsion_scan(
    n_points: int = 24, calculator=None, fmax: float = 0.02, steps: int = 300, start: Atoms | None = None
) -> list[Atoms]:
    """Relaxed scan of the H–O–C–C torsion: φ from 180° through gauche+ (60), cis (0), gauche− (−60).

    φ_k = 180 − k·360/n_points, moving the hydroxyl H (:func:`advsample.molecules.dihedral_scan`,
    default calculator GFN2-xTB, from the relaxed anti minimum unless ``start``). Returned
    unlabeled, without constraints; ``info["torsion"]`` = φ in degrees (−180, 180].
    """
    calculator = calculator if calculator is not None else xtb_calculator()
    current = (start if start is not None else ethanol_minimum(calculator)).copy()
    h, o, ca, cb = torsion_indices(current)
    angles = [180.0 - k * 360.0 / n_points for k in range(n_points)]
    return dihedral_scan(current, (h, o, ca, cb), angles, calculator, fmax, steps, moving=[h], info_key="torsion")


def thermal_frames(
    start: Atoms, n_frames: int, centre_deg: float, window_deg: float, seed: int = 0, temperature_K: float = 300.0,
    calculator=None, **options,
) -> list[Atoms]:
    """Langevin MD frames (GFN2-xTB) whose H–O–C–C torsion stays within ``window_deg`` of ``centre_deg``
    (:func:`advsample.molecules.basin_frames` on :func:`torsion_angle`; ``info["torsion"]`` in degrees)."""
    return basin_frames(start, n_frames, torsion_angle, centre_deg, window_deg, seed=seed, temperature_K=temperature_K,
                        calculator=calculator, period=360.0, info_key="torsion", **options)


def ethanol_dataset(
    n: int = 100, seed: int = 0, temperature_K: float = 300.0, n_scan: int = 24, n_test_thermal: int = 20,
    calculator=None,
) -> tuple[list[Atoms], list[Atoms]]:
    """(train, test) for ethanol, all labeled with GFN2-xTB (absolute eV, eV/Å).

    * train: ``n`` frames of 300 K Langevin MD (``temperature_K``) from the relaxed anti
      conformer, kept only while the H–O–C–C torsion is within 40° of 180°: one conformer
      basin (``info["subset"] = "anti_md"``).
    * test: the relaxed torsion scan (:func:`torsion_scan`, ``n_scan`` points through both
      gauche minima, the anti–gauche barriers and cis; ``"torsion_scan"``), plus
      ``n_test_thermal`` held-out MD frames near each conformer: anti (other seed,
      ``"anti_md_test"``), gauche+ and gauche− (``"gauche_md"``).

    ``info["torsion"]`` (degrees) is set on every structure. Seeded; nothing is cached
    (≈ 10–20 s on one core).
    """
    calculator = calculator if calculator is not None else xtb_calculator()
    anti = ethanol_minimum(calculator)
    gauche = ethanol_minimum(calculator, torsion_deg=60.0)
    gauche_phi = abs(torsion_angle(gauche))
    gauche_minus = gauche.copy()
    gauche_minus.positions[:, 2] *= -1  # the mirror image: φ → −φ
    seeds = np.random.SeedSequence(seed).generate_state(4)

    def tag(frames, subset):
        for atoms in frames:
            atoms.info["subset"] = subset
        return frames

    train = tag(thermal_frames(anti, n, 180.0, ANTI_WINDOW_DEG, int(seeds[0]), temperature_K, calculator), "anti_md")
    test = tag(torsion_scan(n_scan, calculator, start=anti), "torsion_scan") if n_scan > 0 else []
    if n_test_thermal > 0:
        test += tag(thermal_frames(anti, n_test_thermal, 180.0, ANTI_WINDOW_DEG, int(seeds[1]), temperature_K,
                                   calculator), "anti_md_test")
        for start, centre, s in ((gauche, gauche_phi, seeds[2]), (gauche_minus, -gauche_phi, seeds[3])):
            test += tag(thermal_frames(start, n_test_thermal, centre, GAUCHE_WINDOW_DEG, int(s), temperature_K,
                                       calculator), "gauche_md")
    train = relabel_xtb(train, calculator)
    test = relabel_xtb(test, calculator)
    for atoms in train + test:
        atoms.info["torsion"] = torsion_angle(atoms)
    return train, test


def torsion_profile_errors(predict_energies, scan: Sequence[Atoms]) -> dict:
    """How well an energy model reproduces the relaxed torsion profile (at the scan geometries).

    ``predict_energies(scan)`` -> [B] energies (eV). Profiles are taken relative to the
    scan's first point (anti, φ = 180°). Returns ``profile_mae`` (eV), ``profile_max_error``
    (eV), and the anti→gauche barrier (highest scan point between 180° and the gauche
    minimum, kcal/mol) of reference and model and their difference.
    """
    reference = np.array([a.get_potential_energy() for a in scan], dtype=float)
    predicted = np.asarray(predict_energies(scan), dtype=float)
    reference, predicted = reference - reference[0], predicted - predicted[0]
    error = predicted - reference
    phi = np.array([a.info.get("torsion", torsion_angle(a)) for a in scan])
    gauche = int(np.argmin(np.where(phi > 0, reference, np.inf)))  # lowest point on the φ > 0 side
    barrier_ref = profile_barrier(reference, end=gauche) / KCAL_PER_MOL
    barrier_model = profile_barrier(predicted, end=gauche) / KCAL_PER_MOL
    return {
        "profile_mae": float(np.abs(error).mean()),
        "profile_max_error": float(np.abs(error).max()),
        "barrier_kcal_mol": barrier_model,
        "reference_barrier_kcal_mol": barrier_ref,
        "barrier_error_kcal_mol": barrier_model - barrier_ref,
    }


# -- the System ------------------------------------------------------------------------------
METRICS = [
    Metric("path_force_mae", "{E}/Å", label="torsion-scan force MAE", log_scale=True),
    Metric("path_energy_mae", "{E}", label="torsion energy-profile MAE", log_scale=True),
    Metric("barrier_abs_error_kcal_mol", "kcal/mol", label="|anti→gauche barrier error|"),
    Metric("barrier_error_kcal_mol", "kcal/mol", label="anti→gauche barrier error (committee − xTB)"),
    Metric("md_stable_fraction", "", lower_is_better=False, label="1000 K committee-MD stable fraction",
           kind="thermal"),
]
# a barely trained committee: a wide energy window so that every run fills its budget
SMOKE = {"n_initial": 12, "n_scan": 6, "n_test_thermal": 3, "attack_steps": 6, "md_steps": 10, "n_features": 8,
         "n_members": 3, "patience": 15, "energy_ceiling": 20.0, "stability_md_runs": 2, "stability_md_steps": 20,
         "epochs": 15, "budget": 4}


def ethanol(smoke: bool = False, n_initial: int = 100, n_scan: int = 24, n_test_thermal: int = 20,
            epochs: int = 1000, patience: int = 200, n_members: int = 5, n_features: int = 32, budget: int = 10,
            kT: float = 0.1, energy_ceiling: float = 0.5, displacement: float = 0.05, attack_steps: int = 60,
            attack_learning_rate: float = 0.01, uncertainty: str = "forces", n_attack_seeds: int | None = None,
            md_steps: int = 200, data_seed: int = 0, validation_fraction: float = 0.0, stability_md_runs: int = 8,
            stability_md_steps: int = 400, stability_temperature_K: float = 1000.0,
            stability_energy_tolerance_eV: float = 0.05) -> System:
    """Ethanol with GFN2-xTB labels and a SchNet committee (species H, C, O).

    Initial data: ``n_initial`` 300 K MD frames of the anti conformer only (H–O–C–C torsion
    within 40° of 180°); test: the relaxed torsion scan plus held-out thermal frames
    (:func:`ethanol_dataset`). Labels through a :class:`~advsample.label.CalculatorSpec`
    of :func:`~advsample.molecules.xtb_calculator`. Metrics on the scan: force MAE
    (``path_force_mae``, eV/Å), energy-profile MAE relative to the anti point
    (``path_energy_mae``, eV) and the anti→gauche barrier error at the scan geometries;
    thermal: the fraction of ``stability_md_runs`` committee-MD runs
    (``stability_md_steps`` × 0.5 fs at ``stability_temperature_K`` from anti training
    frames) that stay bonded and within ``stability_energy_tolerance_eV`` of xTB.
    ``smoke``: :data:`SMOKE` (seconds).
    """
    if smoke:
        n_initial, n_scan, n_test_thermal = SMOKE["n_initial"], SMOKE["n_scan"], SMOKE["n_test_thermal"]
        attack_steps, md_steps, n_features, n_members = (SMOKE["attack_steps"], SMOKE["md_steps"],
                                                         SMOKE["n_features"], SMOKE["n_members"])
        patience, energy_ceiling = SMOKE["patience"], SMOKE["energy_ceiling"]
        stability_md_runs, stability_md_steps = SMOKE["stability_md_runs"], SMOKE["stability_md_steps"]
        epochs, budget = min(epochs, SMOKE["epochs"]), min(budget, SMOKE["budget"])
    initial, test = ethanol_dataset(n_initial, seed=data_seed, n_scan=n_scan, n_test_thermal=n_test_thermal,
                                    calculator=xtb_calculator())
    scan = [a for a in test if a.info.get("subset") == "torsion_scan"]

    def make_committee(seed: int) -> Committee:
        model = SchNetCommittee(n_members=n_members, species=(1, 6, 8), n_features=n_features, seed=seed)
        return Committee(model).to(default_device())

    reference = xtb_calculator()

    def evaluate(committee: Committee) -> dict:
        out = {}
        if scan:
            out = torsion_profile_errors(lambda atoms: committee.predict(atoms)["energy_mean"], scan)
            out["path_energy_mae"] = out.pop("profile_mae")
            out["path_force_mae"] = test_errors(committee, scan)["force_mae"]
            out["barrier_abs_error_kcal_mol"] = abs(out["barrier_error_kcal_mol"])
        out.update(md_stability(committee, initial[:stability_md_runs], temperature_K=stability_temperature_K,
                                n_runs=stability_md_runs, n_steps=stability_md_steps, reference=reference,
                                energy_tolerance_eV=stability_energy_tolerance_eV, n_check_frames=5))
        return out

    return System(
        name="ethanol",
        reference=CalculatorSpec("advsample.molecules:xtb_calculator", {}),
        initial=initial,
        test=test,
        make_committee=make_committee,
        energy_unit="eV",
        kT=kT,
        uncertainty=uncertainty,
        train=TrainConfig(epochs=epochs, patience=patience, progress=False),
        selection=SelectionConfig(budget=budget, min_distance=0.01, energy_ceiling=energy_ceiling),
        displacement=displacement,
        attack={"learning_rate": attack_learning_rate, "n_steps": attack_steps, "min_distance": 0.6,
                "n_seeds": n_attack_seeds},
        md={"temperature_K": 300.0, "timestep_fs": 0.5, "n_steps": md_steps, "interval": 5, "n_seeds": 8},
        validation_fraction=validation_fraction,
        kT_sweep=(0.05, 0.2),
        metrics=METRICS,
        evaluate=evaluate,
    )


ethanol.metrics, ethanol.energy_unit = METRICS, "eV"  # read by comparisons of loaded CSVs

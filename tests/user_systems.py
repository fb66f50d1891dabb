"""Systems a user defines in their own file, with public imports only (the package ships neither).

* :func:`tilted_well` — a 2D surface from one energy function (two wells, the right one shallow).
* :func:`hydrogen_peroxide` — H2O2 with GFN2-xTB labels: initial data from MD in one basin of
  the H–O–O–H dihedral, test = a relaxed dihedral scan (the trans barrier) and thermal frames.

Each declares a metric that no built-in system has, so tests can check that it reaches the
comparison rows, the table and the plot. Used as ``tests.user_systems:<factory>``.
"""
from ase.build import molecule

from advsample.committee import Committee
from advsample.label import CalculatorSpec
from advsample.metrics import test_errors
from advsample.models.schnet import SchNetCommittee
from advsample.molecules import basin_frames, dihedral, dihedral_scan, profile_barrier, relabel_xtb, xtb_calculator
from advsample.select import SelectionConfig
from advsample.surfaces import ToySurface
from advsample.systems import Metric, System
from advsample.systems.toy import toy_system
from advsample.train import TrainConfig

DIHEDRAL = (2, 0, 1, 3)  # H–O–O–H in ase.build.molecule("H2O2"): O0, O1, H2 (on O0), H3 (on O1)


def _tilted(q):
    x, y = q[..., 0], q[..., 1]
    return 6 * (x**2 - 1) ** 2 + 1.5 * x + 3 * y**2


def tilted_well(smoke: bool = False, n_initial: int = 64) -> System:
    """A user surface: E = 6(x² − 1)² + 1.5x + 3y², data in the left (deep) well only."""
    surface = ToySurface(_tilted, 2, [(-1.6, 1.6), (-1.2, 1.2)], name="tilted_well")
    system = toy_system(surface, region=[(-1.6, -0.3), (-1.2, 1.2)], name="tilted_well", smoke=smoke,
                        n_initial=n_initial, initial_max_energy=1.0, test_max_energy=6.0, hidden=(32, 32))
    right = [a for a in system.test if a.positions[0, 0] > 0.3]

    def evaluate(committee):
        return {"right_well_force_mae": test_errors(committee, right)["force_mae"]}

    system.metrics = [Metric("right_well_force_mae", "{E}/Å", label="right-well force MAE", log_scale=True)]
    system.evaluate = evaluate
    return system


def hydrogen_peroxide(smoke: bool = False, n_initial: int = 16, n_scan: int = 8, epochs: int = 300) -> System:
    """A user molecule: H2O2 with GFN2-xTB, training frames within 30° of the gauche minimum only."""
    reference = xtb_calculator()
    start = molecule("H2O2")
    phi0 = dihedral(start, DIHEDRAL)
    frames = basin_frames(start, n_initial if not smoke else 6, lambda a: dihedral(a, DIHEDRAL), phi0, 30.0,
                          seed=0, temperature_K=300.0, calculator=reference, period=360.0, interval=10,
                          equilibration=50)
    initial = relabel_xtb(frames, reference)
    angles = [phi0 + k * 360.0 / n_scan for k in range(n_scan)]
    scan = relabel_xtb(dihedral_scan(start, DIHEDRAL, angles, reference, info_key="dihedral"), reference)
    for atoms in scan:
        atoms.info["subset"] = "dihedral_scan"

    def make_committee(seed):
        return Committee(SchNetCommittee(n_members=3, species=(1, 8), n_features=8 if smoke else 16, seed=seed))

    def evaluate(committee):
        predicted = committee.predict(scan)["energy_mean"]
        reference_energies = [a.get_potential_energy() for a in scan]
        return {"scan_barrier_abs_error_eV": abs(profile_barrier(predicted) - profile_barrier(reference_energies))}

    return System(
        name="hydrogen_peroxide", reference=CalculatorSpec("advsample.molecules:xtb_calculator"), initial=initial,
        test=scan, make_committee=make_committee, energy_unit="eV", kT=0.1, uncertainty="forces",
        train=TrainConfig(epochs=15 if smoke else epochs, progress=False),
        selection=SelectionConfig(budget=2 if smoke else 5, energy_ceiling=20.0 if smoke else 1.0),
        attack={"n_steps": 5 if smoke else 30, "learning_rate": 0.01, "min_distance": 0.6},
        md={"temperature_K": 300.0, "timestep_fs": 0.5, "n_steps": 10 if smoke else 100, "n_seeds": 2},
        displacement=0.05, validation_fraction=0.0, kT_sweep=(0.3,),
        metrics=[Metric("scan_barrier_abs_error_eV", "eV", label="|scan barrier error|",
                        lower_is_better=True)],
        evaluate=evaluate,
    )

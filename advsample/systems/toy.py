"""Toy surfaces as systems: the 1D and 2D double wells, or any surface from one energy function.

    surface = ToySurface(lambda q: (q[..., 0]**2 - 1)**2 + q[..., 1]**2, 2, [(-2, 2), (-1.5, 1.5)])
    system = toy_system(surface, region=[(-2, 0), (-1.5, 1.5)], name="my_well")

Initial data: ``n_initial`` points of ``region`` below ``initial_max_energy`` (seed 0);
test: ``n_test`` points of the whole surface below ``test_max_energy`` (seed 5); a
committee of MLPs on the free coordinates; kT = 1 (the toy's arbitrary energy unit).
"""
from __future__ import annotations

from typing import Sequence

from ase import units

from ..committee import Committee, default_device
from ..models import MLPCommittee
from ..parameters import as_number
from ..select import SelectionConfig
from ..surfaces import ToySurface, get_surface
from ..train import TrainConfig
from . import System

REGIONS = {"double_well_2d": [(-1.5, 0.0), (-1.2, 1.2)], "double_well_1d": [(-1.6, 0.0)]}  # the left wells
SMOKE = {"n_initial": 24, "n_test": 40, "attack_steps": 6, "md_steps": 10, "epochs": 15, "budget": 4}


def toy_system(surface: ToySurface, region: Sequence[Sequence[float]] | None = None, name: str | None = None,
               smoke: bool = False, n_initial: int = 128, n_test: int = 400, initial_max_energy: float | None = 0.0,
               test_max_energy: float | None = 4.0, epochs: int = 600, hidden: Sequence[int] = (64, 64, 64),
               budget: int = 20, kT: float = 1.0, displacement: float = 0.2, n_members: int = 5,
               attack_steps: int = 60, md_steps: int = 200, kT_sweep: Sequence[float] = (0.3, 3.0),
               data_seed: int = 0) -> System:
    """A :class:`System` on a toy surface (energies in the toy's arbitrary units, lengths in Å).

    ``region``: the (min, max) per free coordinate the initial data come from (default: the
    surface's bounds). ``smoke``: :data:`SMOKE` (seconds). Committee MD runs at k_B T = kT
    (the toy's energy unit read as eV, as ASE MD does). ``data_seed``: initial data drawn
    with it, the test set with ``data_seed + 5``.
    """
    kT, displacement = as_number(kT, "kT", rule="> 0"), as_number(displacement, "displacement", rule="> 0")
    n_initial, n_test, epochs, budget, n_members, attack_steps, md_steps, data_seed = (
        as_number(value, name, int, rule) for value, name, rule in (
            (n_initial, "n_initial", "> 0"), (n_test, "n_test", ">= 0"), (epochs, "epochs", "> 0"),
            (budget, "budget", "> 0"), (n_members, "n_members", "> 0"), (attack_steps, "attack_steps", "> 0"),
            (md_steps, "md_steps", "> 0"), (data_seed, "data_seed", None)))
    kT_sweep = tuple(as_number(value, "kT_sweep", rule="> 0") for value in kT_sweep)
    if smoke:
        n_initial, n_test, attack_steps, md_steps = (SMOKE["n_initial"], SMOKE["n_test"], SMOKE["attack_steps"],
                                                     SMOKE["md_steps"])
        epochs, budget = min(epochs, SMOKE["epochs"]), min(budget, SMOKE["budget"])
    initial = surface.sample(n_initial, seed=data_seed, max_energy=initial_max_energy, region=region)
    test = surface.sample(n_test, seed=data_seed + 5, max_energy=test_max_energy)
    axes, hidden = tuple(range(surface.n_dims)), tuple(hidden)

    def make_committee(seed: int) -> Committee:
        return Committee(MLPCommittee(n_members, hidden, input_axes=axes, seed=seed)).to(default_device())

    return System(
        name=name or surface.surface_name,
        reference=surface,
        initial=initial,
        test=test,
        make_committee=make_committee,
        energy_unit="arb. units",
        kT=kT,
        uncertainty="forces",
        train=TrainConfig(epochs=epochs, progress=False),
        selection=SelectionConfig(budget=budget, min_distance=0.02),
        attack={"learning_rate": 0.02, "n_steps": attack_steps},
        md={"temperature_K": kT / units.kB, "timestep_fs": 1.0, "n_steps": md_steps, "interval": 5, "n_seeds": 8},
        displacement=displacement,
        validation_fraction=0.1,
        kT_sweep=tuple(kT_sweep),
    )


def double_well_2d(smoke: bool = False, **options) -> System:
    """The paper's 2D double well; initial data in the left well only (E < 0)."""
    return toy_system(get_surface("double_well_2d"), REGIONS["double_well_2d"], "double_well_2d", smoke, **options)


def double_well_1d(smoke: bool = False, **options) -> System:
    """The 1D double well; initial data in the left well only (E < 0)."""
    return toy_system(get_surface("double_well_1d"), REGIONS["double_well_1d"], "double_well_1d", smoke, **options)


for _factory in (double_well_2d, double_well_1d):
    _factory.metrics, _factory.energy_unit = [], "arb. units"  # read by comparisons of loaded CSVs

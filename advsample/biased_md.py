"""Uncertainty-biased molecular dynamics: the committee plus a bias towards high uncertainty.

Two published biases, each written once for a :class:`~advsample.structures.Batch`
(:func:`udd_forces`, :func:`biased_md_forces`: one committee call for all structures) and used
by an ASE calculator wrapping a :class:`~advsample.committee.Committee` (for ASE dynamics, on
molecules and periodic cells) and by their samplers, which run all replicas batched
(:func:`~advsample.samplers.langevin_frames`).

UDD-AL (Kulichenko et al., Nat. Comput. Sci. 3, 230, 2023), :class:`UDDCalculator`::

    E = Ē + E_bias,   E_bias = A·[exp(−σ²_E / (N_M·N_A·B²)) − 1],   σ²_E = ½ Σ_m (E_m − Ē)²,

so with Var_m(E) = (1/N_M) Σ_m (E_m − Ē)² the exponent is Var_m(E) / (2·N_A·B²) for any
number of members N_M. (The reference implementation, lanl/Active-Learning-Framework,
branch udd-al, uses exp(−½Σ(E_m − Ē)² / (8·N_A·B²)): the paper's form with its N_M = 8.)
E_bias ≤ 0 is a well of depth A at high energy variance; B sets how much variance it takes.
Forces F = −∇(Ē + E_bias) by autograd through the committee (first derivatives only: no
double backward). The paper's glycine
values, A = 15.4 kcal/mol and B = 0.12 kcal/mol at 350 K (0.0245 and 0.00019 Hartree in
the reference code), are 0.668 eV and 5.20 meV, i.e. A = 22.1 k_B T and B = 0.173 k_B T at
350 K; the sampler's default keeps those ratios to the MD temperature, so the same
defaults serve eV molecules and the toys' arbitrary units.

Uncertainty-biased MD (Zaverkin et al., npj Comput. Mater. 10, 83, 2024), :class:`BiasedMDCalculator`::

    F = F̄ + τ·s·∇σ_E,   E = Ē − τ·s·σ_E,   s = ‖F̄‖_W / ‖∇σ_E‖_W,

σ_E the committee's energy standard deviation (the paper biases with the total-energy
uncertainty), τ the dimensionless biasing strength (0.25 in their alanine-dipeptide runs)
and s the adaptive rescaling: the root of the summed squared norms of the unbiased and
the uncertainty-gradient forces over the last W steps, s = 0 during the first
``burn_in_steps`` steps (unbiased MD). Their runs used W = burn-in = 100 steps of
20000-step trajectories; the defaults here, 20, keep the burn-in a tenth of a 200-step
run. Their bias stress for constant-pressure runs is the strain derivative of the same biased
energy with s held, −τ·s·(1/V)·∂σ_E/∂ε, by automatic differentiation: the calculators give it
(and UDD's (1/V)·∂E_bias/∂ε) with ``stress`` on periodic cells, so ASE's constant-pressure
dynamics (``NPTBerendsen``, ``NPT``) run the biased surface; the samplers run NVT.

Both papers end a trajectory once the uncertainty passes a threshold (UDD-AL: a multiple,
``sigma_factor`` = 4, of the largest uncertainty on the training data, or a fixed value;
Zaverkin et al.: a calibrated atom-based threshold), which keeps the bias from carrying
walkers into regions where the committee mean is meaningless. The samplers here stop a
trajectory at the first step whose σ_E exceeds ``stop_factor`` (4) times the largest σ_E
over the training structures; that frame is the trajectory's last candidate.

Both samplers rank their frames by σ² alone (``ranking="sigma"``, the run objective's
variance), like committee MD (``md``): both papers select by the uncertainty, and the
thermodynamic control is in the bias and the temperature, not in a Boltzmann score.
``ranking="score"`` ranks them by the objective's score instead (an ablation).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from . import uncertainty
from .committee import Committee
from .objective import Objective
from .samplers import Proposal, ReplicaForces, UncertaintyMDSampler, choose_seeds, langevin_frames, register_sampler
from .structures import Batch, strained, voigt_stress

# UDD-AL glycine parameters (Kulichenko et al. 2023) and the temperature they were used at
UDD_AMPLITUDE_KCAL_MOL = 15.4
UDD_WIDTH_KCAL_MOL = 0.12
UDD_TEMPERATURE_K = 350.0
_KCAL_MOL_EV = units.kcal / units.mol  # 1 kcal/mol in eV
UDD_AMPLITUDE_KT = UDD_AMPLITUDE_KCAL_MOL * _KCAL_MOL_EV / (units.kB * UDD_TEMPERATURE_K)  # 22.1
UDD_WIDTH_KT = UDD_WIDTH_KCAL_MOL * _KCAL_MOL_EV / (units.kB * UDD_TEMPERATURE_K)  # 0.173


def udd_bias_energy(energy_variance: torch.Tensor, n_atoms: torch.Tensor, amplitude: float,
                    width: float) -> torch.Tensor:
    """E_bias [B] = A·[exp(−Var_m(E) / (2·N_A·B²)) − 1] for the member variance [B] (energy²) and N_A [B]."""
    return amplitude * (torch.exp(-energy_variance / (2.0 * n_atoms.to(energy_variance.dtype) * width**2)) - 1.0)


@dataclass
class BiasedForces:
    """One biased evaluation of B structures (N atoms), float64: ``energy_mean`` Ē [B], ``bias_energy``
    [B] and ``energy_std`` σ_E [B] (energy unit); ``forces`` [N, 3] (biased) and their part
    ``bias_forces`` [N, 3] (energy unit/Å); for periodic structures evaluated with stress, ``stress``
    [B, 6] (biased) and its part ``bias_stress`` [B, 6] (energy unit/Å³, ASE's Voigt order)."""

    energy_mean: np.ndarray
    bias_energy: np.ndarray
    energy_std: np.ndarray
    forces: np.ndarray
    bias_forces: np.ndarray
    stress: np.ndarray | None = None
    bias_stress: np.ndarray | None = None


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(float)


@dataclass
class _Gradients:
    """Member energies [M, B] and the bias term [B] (detached); ∇Ē and ∇term [N, 3]; with stress,
    (1/V)·∂Ē/∂ε and (1/V)·∂term/∂ε [B, 6] (Voigt), else None. float64 arrays."""

    energies: torch.Tensor
    term: torch.Tensor
    gradient_mean: np.ndarray
    gradient_term: np.ndarray
    stress_mean: np.ndarray | None
    stress_term: np.ndarray | None


def _mean_and_term_gradients(committee: Committee, batch: Batch, term: Callable[[torch.Tensor, Batch], torch.Tensor],
                             stress: bool = False) -> _Gradients:
    """``term(energies, batch)`` and the gradients of Ē and of the term by autograd through one
    committee call (first derivatives only). With ``stress``, also their derivatives with respect to
    a symmetric strain ε of each structure (x → x(1 + ε), cell rows h → h(1 + ε)) over its volume."""
    batch = batch.to(committee.device, committee.dtype)
    positions = batch.positions.detach().clone().requires_grad_(True)
    committee.eval()
    with torch.enable_grad():
        inputs, evaluated, moved = [positions], batch, positions
        if stress:
            strain, evaluated, moved = strained(batch, positions)
            inputs.append(strain)
        energies = committee(evaluated, forces=False, create_graph=True, positions=moved).energies
        mean, value = energies.mean(0), term(energies, batch)
        gradients_mean = torch.autograd.grad(mean.sum(), inputs, retain_graph=True)
        gradients_term = torch.autograd.grad(value.sum(), inputs)
    stresses = [None, None]
    if stress:
        stresses = [_numpy(voigt_stress(g[1], batch.cells)) for g in (gradients_mean, gradients_term)]
    return _Gradients(energies.detach(), value.detach(), _numpy(gradients_mean[0]), _numpy(gradients_term[0]),
                      *stresses)


def udd_forces(committee: Committee, batch: Batch, amplitude: float, width: float, stress: bool = False) -> BiasedForces:
    """UDD-AL for each structure of ``batch``: Ē + E_bias and −∇(Ē + E_bias) (see the module), with
    ``stress`` also (1/V)·∂(Ē + E_bias)/∂ε; ``amplitude`` A and ``width`` B in the energy unit."""
    g = _mean_and_term_gradients(
        committee, batch, lambda e, b: udd_bias_energy(uncertainty.energy_variance(e), b.n_atoms, amplitude, width),
        stress)
    return BiasedForces(_numpy(g.energies.mean(0)), _numpy(g.term), _numpy(uncertainty.energy_variance(g.energies).sqrt()),
                        -(g.gradient_mean + g.gradient_term), -g.gradient_term,
                        None if g.stress_mean is None else g.stress_mean + g.stress_term, g.stress_term)


class AdaptiveRescaling:
    """The adaptive s of one trajectory: s = ‖F̄‖_W / ‖∇σ_E‖_W, the roots of the squared norms
    summed over the last ``window`` evaluations (one per MD step); 0 while the evaluations so far
    number ≤ ``burn_in_steps``."""

    def __init__(self, window: int, burn_in_steps: int):
        self.burn_in_steps = int(burn_in_steps)
        self.true_norm_sq: deque = deque(maxlen=window)
        self.bias_norm_sq: deque = deque(maxlen=window)
        self.n_calls = 0

    @property
    def value(self) -> float:
        """s (energy unit: ‖F̄‖ over ‖∇σ_E‖, both per Å)."""
        if self.n_calls <= self.burn_in_steps or not self.true_norm_sq:
            return 0.0
        return float(np.sqrt(sum(self.true_norm_sq)) / (np.sqrt(sum(self.bias_norm_sq)) + 1e-12))

    def update(self, true_norm_sq: float, bias_norm_sq: float) -> float:
        """Add one evaluation's ‖F̄‖² and ‖∇σ_E‖² (free coordinates only); returns the new s."""
        self.true_norm_sq.append(float(true_norm_sq))
        self.bias_norm_sq.append(float(bias_norm_sq))
        self.n_calls += 1
        return self.value


def biased_md_forces(committee: Committee, batch: Batch, tau: float, rescalings: Sequence[AdaptiveRescaling],
                     stress: bool = False) -> BiasedForces:
    """Uncertainty-biased MD for each structure of ``batch``: F̄ + τ·s·∇σ_E and E = Ē − τ·s·σ_E (see
    the module), s from structure b's own ``rescalings[b]`` (each updated by this evaluation);
    coordinates held by constraints do not enter the norms. With ``stress``, the bias stress
    −τ·s·(1/V)·∂σ_E/∂ε is added to the committee's stress (1/V)·∂Ē/∂ε."""
    if len(rescalings) != batch.n_structures:
        raise ValueError(f"biased MD needs one rescaling per structure: {len(rescalings)} for {batch.n_structures}")
    g = _mean_and_term_gradients(committee, batch, lambda e, b: uncertainty.energy_variance(e).clamp(min=1e-30).sqrt(),
                                 stress)
    forces, gradient_sigma = -g.gradient_mean, g.gradient_term  # +∇σ_E: towards higher uncertainty
    free, index = ~batch.fixed.cpu().numpy(), batch.structure_index.cpu().numpy()

    def norm_sq(vectors: np.ndarray) -> np.ndarray:  # [N, 3] -> [B] squared norms over free coordinates
        return np.bincount(index, weights=((vectors * free) ** 2).sum(1), minlength=batch.n_structures)

    strength = tau * np.array([r.update(f, b) for r, f, b in zip(rescalings, norm_sq(forces), norm_sq(gradient_sigma))])
    bias_forces = strength[index, None] * gradient_sigma
    sigma = _numpy(g.term)
    bias_stress = None if g.stress_term is None else -strength[:, None] * g.stress_term
    return BiasedForces(_numpy(g.energies.mean(0)), -strength * sigma, sigma, forces + bias_forces, bias_forces,
                        None if bias_stress is None else g.stress_mean + bias_stress, bias_stress)


class _BiasCalculator(Calculator):
    """Shared results of the bias calculators: ``energy`` and ``forces`` biased;
    ``energy_unbiased`` (Ē), ``bias_energy``, ``energy_std`` (committee σ_E), ``bias_forces`` [N, 3];
    for periodic atoms also ``stress`` (biased, eV/Å³) and ``bias_stress`` [6], every call (so ASE's
    constant-pressure dynamics evaluate, and update the biased-MD window, once per step)."""

    implemented_properties = ["energy", "forces", "energy_unbiased", "bias_energy", "energy_std", "bias_forces",
                              "stress", "bias_stress"]

    def __init__(self, committee: Committee, **kwargs):
        super().__init__(**kwargs)
        self.committee = committee

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if any(p in properties for p in ("stress", "bias_stress")) and not self.atoms.pbc.any():
            raise PropertyNotImplementedError("stress needs a periodic structure (atoms.pbc has no True)")
        result = self._evaluate(Batch.from_atoms([self.atoms]), stress=bool(self.atoms.pbc.any()))
        self.results = {
            "energy": float(result.energy_mean[0] + result.bias_energy[0]),
            "forces": result.forces,
            "energy_unbiased": float(result.energy_mean[0]),
            "bias_energy": float(result.bias_energy[0]),
            "energy_std": float(result.energy_std[0]),
            "bias_forces": result.bias_forces,
        }
        if result.stress is not None:
            self.results.update(stress=result.stress[0], bias_stress=result.bias_stress[0])

    def _evaluate(self, batch: Batch, stress: bool) -> BiasedForces:
        raise NotImplementedError


class UDDCalculator(_BiasCalculator):
    """UDD-AL: the committee mean plus E_bias = A·[exp(−Var_m(E)/(2·N_A·B²)) − 1] (see the module).

    ``amplitude`` A and ``width`` B in the committee's energy unit (eV for molecules).
    """

    def __init__(self, committee: Committee, amplitude: float, width: float, **kwargs):
        super().__init__(committee, **kwargs)
        if not amplitude >= 0 or not width > 0:
            raise ValueError(f"UDD needs amplitude >= 0 and width > 0 (energy unit), got {amplitude!r}, {width!r}")
        self.amplitude = float(amplitude)
        self.width = float(width)

    def _evaluate(self, batch: Batch, stress: bool) -> BiasedForces:
        return udd_forces(self.committee, batch, self.amplitude, self.width, stress)


class BiasedMDCalculator(_BiasCalculator):
    """Uncertainty-biased MD: F = F̄ + τ·s·∇σ_E with the adaptive rescaling s (see the module).

    ``tau`` dimensionless; ``window`` and ``burn_in_steps`` count force evaluations (one per
    MD step). State (the window, :class:`AdaptiveRescaling`) lives in the calculator: use one
    per trajectory.
    """

    def __init__(self, committee: Committee, tau: float = 0.25, window: int = 20, burn_in_steps: int = 20, **kwargs):
        super().__init__(committee, **kwargs)
        if not tau >= 0:
            raise ValueError(f"tau (biasing strength) must be >= 0, got {tau!r}")
        if window < 1 or burn_in_steps < 0:
            raise ValueError(f"window must be >= 1 and burn_in_steps >= 0, got {window}, {burn_in_steps}")
        self.tau = float(tau)
        self.adaptive = AdaptiveRescaling(window, burn_in_steps)

    @property
    def rescaling(self) -> float:
        """s = ‖F̄‖_W / ‖∇σ_E‖_W over the window; 0 during the burn-in."""
        return self.adaptive.value

    def _evaluate(self, batch: Batch, stress: bool) -> BiasedForces:
        return biased_md_forces(self.committee, batch, self.tau, [self.adaptive], stress)


@dataclass
class _BiasedLangevinSampler(UncertaintyMDSampler):
    """Langevin MD (the fields of :class:`~advsample.samplers.UncertaintyMDSampler`) on a biased surface."""

    ranking: str = "sigma"
    stop_factor: float | None = 4.0  # stop a trajectory where σ_E > stop_factor × the training set's largest σ_E

    def __post_init__(self):
        super().__post_init__()
        if self.ranking not in ("sigma", "score"):
            raise ValueError(f"ranking must be 'sigma' or 'score', got {self.ranking!r}")
        if self.stop_factor is not None and not self.stop_factor > 0:
            raise ValueError(f"stop_factor must be positive or None, got {self.stop_factor!r}")

    def stop_energy_std(self, committee: Committee, seeds: Sequence[Atoms]) -> float | None:
        """σ_E (energy unit) that ends a trajectory: ``stop_factor`` × the largest σ_E over ``seeds``."""
        if self.stop_factor is None:
            return None
        return self.stop_factor * float(np.sqrt(committee.predict(list(seeds))["energies"].var(0)).max())

    def temperature(self, objective: Objective) -> float:
        """The MD temperature (K): ``temperature_K`` or k_B T = the objective's kT."""
        return self.temperature_K if self.temperature_K is not None else objective.kT / units.kB

    def replica_forces(self, committee: Committee, objective: Objective) -> ReplicaForces:
        """The biased forces of a batch of replicas (:func:`~advsample.samplers.langevin_frames`), fresh state."""
        raise NotImplementedError

    def propose(self, committee, seeds, train_energies, objective, seed=0, progress=True) -> Proposal:
        trajectories = langevin_frames(
            choose_seeds(seeds, self.n_seeds, seed), self.replica_forces(committee, objective),
            self.temperature(objective), self.timestep_fs, self.n_steps, self.interval, self.friction, seed,
            self.stop_energy_std(committee, seeds),
        )
        frames = [f for trajectory in trajectories for f in trajectory]
        return Proposal(objective.bind(train_energies).score(committee, frames, self.name), trajectories=trajectories)


@dataclass
class UDDSampler(_BiasedLangevinSampler):
    """UDD-AL (Kulichenko et al. 2023): Langevin MD on Ē + A·[exp(−Var_m(E)/(2·N_A·B²)) − 1].

    ``amplitude`` A and ``width`` B in the reference's energy unit; None: the published
    glycine values as multiples of the MD temperature (A = 22.1 k_B T, B = 0.173 k_B T:
    15.4 and 0.12 kcal/mol at 350 K). Ranking: by σ² (see the module).
    """

    amplitude: float | None = None
    width: float | None = None
    name = "udd"

    def __post_init__(self):
        super().__post_init__()
        for label, value in (("amplitude", self.amplitude), ("width", self.width)):
            if value is not None and not value > 0:
                raise ValueError(f"UDD {label} must be a positive energy (reference unit) or None, got {value!r}")

    def bias_parameters(self, objective: Objective) -> tuple[float, float]:
        """(A, B) in the energy unit."""
        kT = units.kB * self.temperature(objective)
        return (self.amplitude if self.amplitude is not None else UDD_AMPLITUDE_KT * kT,
                self.width if self.width is not None else UDD_WIDTH_KT * kT)

    def replica_forces(self, committee, objective):
        amplitude, width = self.bias_parameters(objective)

        def forces(batch: Batch, replicas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            result = udd_forces(committee, batch, amplitude, width)
            return result.forces, result.energy_std

        return forces


@dataclass
class BiasedMDSampler(_BiasedLangevinSampler):
    """Uncertainty-biased MD (Zaverkin et al. 2024): F̄ + τ·s·∇σ_E, adaptive s (see the module).

    ``tau`` dimensionless (0.25 as in their alanine-dipeptide runs); ``window`` and
    ``burn_in_steps`` in MD steps. Ranking: by σ² (see the module).
    """

    tau: float = 0.25
    window: int = 20
    burn_in_steps: int = 20
    name = "biased_md"

    def __post_init__(self):
        super().__post_init__()
        if not self.tau >= 0 or self.window < 1 or self.burn_in_steps < 0:
            raise ValueError(f"biased MD needs tau >= 0, window >= 1, burn_in_steps >= 0, got "
                             f"{self.tau}, {self.window}, {self.burn_in_steps}")

    def replica_forces(self, committee, objective):
        rescalings: dict[int, AdaptiveRescaling] = {}  # one window per replica (trajectory)

        def forces(batch: Batch, replicas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            own = [rescalings.setdefault(int(r), AdaptiveRescaling(self.window, self.burn_in_steps)) for r in replicas]
            result = biased_md_forces(committee, batch, self.tau, own)
            return result.forces, result.energy_std

        return forces


register_sampler("udd", UDDSampler)
register_sampler("biased_md", BiasedMDSampler)

"""A committee of SchNet models stored as one module (member axis first on every parameter).

SchNet (Schütt et al., J. Chem. Phys. 148, 241722, 2018): species embedding, Gaussian
radial basis of interatomic distances, continuous-filter convolutions with a smooth
cosine cutoff, atomwise readout summed per structure. The filters are linear in the
cut-off radial basis, as in PaiNN (Schütt et al., ICML 2021), instead of SchNet's
two-layer filter network: the pair-level tensors [M, P, F] dominate the cost of the
force-loss double backward, and this halves it. Linear filters also let the first
interaction, whose inputs are still the elements' embeddings, sum the radial features per
(atom, neighbour element) before filtering — Φ_isk = Σ_{j of element s} φ_ijk, then
Σ_s y_s ⊙ (Φ_is · W) — the same energies with atom-sized instead of pair-sized tensors (used
when N · n_species ≤ P). The M members are evaluated together with batched matmuls
(``torch.baddbmm`` on weights shaped ``[M, in, out]``), so
:meth:`advsample.committee.Committee.gather` can concatenate members along dim 0.

Distances are computed from the per-member ``positions`` [M, N, 3] argument, never from
``batch.positions``, so the committee's one ``autograd.grad`` gives every member's forces.
Training takes :meth:`SchNetCommittee.fixed_geometry` instead: pairs (each unordered pair
once, acting in both directions), the cut-off radial basis and its distance derivative
computed once per training set, forces by the chain rule through them (see :mod:`.base`).

Neighbours
    * Non-periodic structures: all ordered pairs (i, j), i != j, within each structure,
      built in torch over the whole batch (cached while the batch layout is unchanged);
      pairs farther apart than the cutoff are dropped.
    * Periodic structures (any ``pbc`` True): vesin's cell list (the pairs of
      ``ase.neighborlist.neighbor_list('ijS')``) on the CPU, per structure, kept per
      geometry in a :class:`~.neighbours.NeighbourCache` (training structures are listed
      once, not every epoch); r_ij = x_j - x_i + S @ cell.

Rules (each raises ``ValueError`` with a message that says what to change)
    * an element the model was not built for (``species``);
    * two atoms (or an atom and a periodic image) closer than ``min_distance`` Å
      (``geometry.GeometryError``, a ValueError carrying the structures at fault);
    * a periodic structure whose cell is narrower than the cutoff in a periodic
      direction (perpendicular height < ``cutoff``), or degenerate. The neighbour list
      itself handles any number of images correctly; the rule keeps the number of
      images per pair and the cost per atom bounded and catches cells that were not
      meant to be periodic. The message gives the ``atoms.repeat`` that fixes it.
"""
from __future__ import annotations

import math
import weakref
from typing import Sequence

import numpy as np
import torch
from ase.data import chemical_symbols
from torch import nn

from ..geometry import GeometryError
from ..structures import Batch
from .base import FixedGeometry
from .neighbours import NeighbourCache, batch_neighbours


def shifted_softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(x) - math.log(2.0)


def cosine_cutoff(distances: torch.Tensor, cutoff: float) -> torch.Tensor:
    """0.5 (cos(pi d / rc) + 1) for d < rc, else 0 (continuous with continuous derivative)."""
    inside = distances < cutoff
    return torch.where(inside, 0.5 * (torch.cos(distances * (math.pi / cutoff)) + 1.0), torch.zeros_like(distances))


def cell_heights(cell: np.ndarray) -> np.ndarray:
    """[3] perpendicular widths of a cell (volume / area of the opposite face); 0 if degenerate.

    Missing (zero) cell vectors, allowed along non-periodic directions, are completed
    with unit vectors orthogonal to the others first (``ase.cell.Cell.complete``).
    """
    from ase.cell import Cell

    cell = Cell(np.asarray(cell, dtype=float)).complete().array
    volume = abs(np.linalg.det(cell))
    heights = np.zeros(3)
    for k in range(3):
        area = np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3]))
        heights[k] = volume / area if area > 0 else 0.0
    return heights


class SchNetCommittee(nn.Module):
    """M independent SchNet models evaluated together; raw energies [M, B].

    Parameters (all JSON-serialisable, returned by :meth:`config`):
        n_members: committee size M.
        species: atomic numbers the model knows (embedding rows).
        n_features: width F of the atom features and filters.
        n_interactions: number of interaction blocks.
        cutoff: radial cutoff in Å.
        n_rbf: number of Gaussian radial basis functions on [0, cutoff].
        min_distance: closest allowed approach of two atoms (Å); 0 disables the check.
        seed: seeds the independent initialisation of every member.
    """

    stacked = True
    invariances = frozenset({"translation", "rotation", "permutation"})
    normalized = True
    shared_features = True  # geometry_energies also takes features [P, K] shared by all members

    def __init__(
        self,
        n_members: int = 5,
        species: Sequence[int] = (1, 7),
        n_features: int = 32,
        n_interactions: int = 2,
        cutoff: float = 5.0,
        n_rbf: int = 20,
        min_distance: float = 0.3,
        seed: int = 0,
    ):
        super().__init__()
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members}")
        if cutoff <= 0 or n_rbf < 1 or n_features < 1 or n_interactions < 0:
            raise ValueError("cutoff, n_rbf and n_features must be positive, n_interactions >= 0")
        species = sorted({int(z) for z in species})
        if not species or species[0] < 1 or species[-1] >= len(chemical_symbols):
            raise ValueError(f"species must be atomic numbers 1..{len(chemical_symbols) - 1}, got {species}")
        self.n_members = int(n_members)
        self.species = species
        self.n_features = int(n_features)
        self.n_interactions = int(n_interactions)
        self.cutoff = float(cutoff)
        self.n_rbf = int(n_rbf)
        self.min_distance = float(min_distance)
        self.seed = int(seed)

        M, F, K = self.n_members, self.n_features, self.n_rbf
        generator = torch.Generator().manual_seed(self.seed)

        def weight(fan_in: int, fan_out: int) -> nn.Parameter:
            # independent Glorot-uniform initialisation per member (committee diversity)
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            return nn.Parameter((torch.rand(M, fan_in, fan_out, generator=generator) * 2 - 1) * bound)

        def bias(fan_out: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(M, 1, fan_out))

        self.embedding = nn.Parameter(torch.randn(M, len(species), F, generator=generator))
        # linear filters of all interactions side by side: [M, K, T * F]
        self.filters = weight(K, F * max(self.n_interactions, 1))
        self.in2f = nn.ParameterList([weight(F, F) for _ in range(self.n_interactions)])
        self.f2out_w = nn.ParameterList([weight(F, F) for _ in range(self.n_interactions)])
        self.f2out_b = nn.ParameterList([bias(F) for _ in range(self.n_interactions)])
        self.dense_w = nn.ParameterList([weight(F, F) for _ in range(self.n_interactions)])
        self.dense_b = nn.ParameterList([bias(F) for _ in range(self.n_interactions)])
        hidden = max(F // 2, 1)
        self.out_w1 = weight(F, hidden)
        self.out_b1 = bias(hidden)
        self.out_w2 = weight(hidden, 1)
        self.out_b2 = bias(1)

        # not in the state dict (gather concatenates state along the member axis)
        lookup = torch.full((len(chemical_symbols),), -1, dtype=torch.long)
        lookup[torch.tensor(species)] = torch.arange(len(species))
        self.register_buffer("species_lookup", lookup, persistent=False)
        self.register_buffer("rbf_centers", torch.linspace(0.0, self.cutoff, K), persistent=False)
        spacing = self.cutoff / max(K - 1, 1)
        self.rbf_gamma = 0.5 / spacing**2
        self._pair_cache: tuple | None = None
        # periodic neighbour lists per geometry (training reuses them every epoch);
        # NeighbourCache(0) rebuilds them, and the molecular pairs, on every forward pass
        self.neighbour_cache = NeighbourCache()

    def config(self) -> dict:
        return {
            "n_members": self.n_members,
            "species": list(self.species),
            "n_features": self.n_features,
            "n_interactions": self.n_interactions,
            "cutoff": self.cutoff,
            "n_rbf": self.n_rbf,
            "min_distance": self.min_distance,
            "seed": self.seed,
        }

    # -- input checks ------------------------------------------------------------------
    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """[N] atomic numbers -> [N] embedding rows; ValueError for elements the model lacks.

        Checked eagerly (``forward`` and ``fixed_geometry`` call it before any network work); inside
        ``torch.compile`` (``geometry_energies`` compiled by ``dynamics``, always given a geometry that
        ``fixed_geometry`` checked) it is the table lookup alone: the check is data-dependent and would
        split the compiled forward and backward into two graphs.
        """
        index = self.species_lookup[numbers.clamp(0, self.species_lookup.shape[0] - 1)]
        if torch.compiler.is_compiling():
            return index
        valid = (numbers >= 0) & (numbers < self.species_lookup.shape[0])
        bad = ~valid | (index < 0)
        if bool(bad.any()):
            unknown = sorted({int(z) for z in numbers[bad].tolist()})
            names = [chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}" for z in unknown]
            known = [chemical_symbols[z] for z in self.species]
            raise ValueError(
                f"element(s) {', '.join(names)} not known to this model; it was built for species "
                f"{', '.join(known)} (atomic numbers {self.species})"
            )
        return index

    # -- neighbours --------------------------------------------------------------------
    def _molecular_pairs(self, batch: Batch, molecular: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All ordered pairs i != j inside each non-periodic structure: (i [P], j [P])."""
        key = (batch.structure_index, batch.pbc)
        versions = (batch.structure_index._version, batch.pbc._version)
        if self._pair_cache is not None and self.neighbour_cache.max_structures > 0:
            refs, cached_versions, pairs = self._pair_cache
            if all(r() is k for r, k in zip(refs, key)) and cached_versions == versions:
                return pairs
        device = batch.structure_index.device
        index = batch.structure_index
        atom_mask = molecular[index]
        n_atoms = torch.bincount(index, minlength=batch.n_structures)
        first = torch.cumsum(n_atoms, 0) - n_atoms  # [B] index of each structure's first atom
        atoms = torch.arange(index.shape[0], device=device)[atom_mask]
        size = n_atoms[index[atoms]]  # [n] size of each atom's structure
        i = torch.repeat_interleave(atoms, size)
        # j runs over the atoms of i's structure: first[s] + 0..n_s-1
        offsets = torch.arange(i.shape[0], device=device) - torch.repeat_interleave(torch.cumsum(size, 0) - size, size)
        j = first[index[i]] + offsets
        keep = i != j
        pairs = (i[keep], j[keep])
        self._pair_cache = (tuple(weakref.ref(k) for k in key), versions, pairs)
        return pairs

    def _check_cell(self, b: int, cell: np.ndarray, pbc: np.ndarray) -> None:
        """ValueError when structure ``b``'s cell is narrower than the cutoff along a periodic direction.

        Cells that passed are remembered (a cell rarely changes during MD, but every step is a new
        geometry, so this ran once per replica and step: ~1 ms each, more than the neighbour list itself).
        """
        key = (self.cutoff, np.asarray(cell, dtype=np.float64).tobytes(), np.asarray(pbc, dtype=bool).tobytes())
        passed = self.__dict__.setdefault("_passed_cells", {})
        if key in passed:
            return
        heights = cell_heights(cell)
        for axis in np.flatnonzero(pbc):
            if heights[axis] < self.cutoff:
                repeat = [int(math.ceil(self.cutoff / h)) if p and h > 0 else 1 for h, p in zip(heights, pbc)]
                raise ValueError(
                    f"structure {b}: periodic cell too small for the cutoff: its height along cell "
                    f"vector {axis} is {heights[axis]:.3g} Å < cutoff {self.cutoff:g} Å; use a supercell "
                    f"at least as wide as the cutoff, e.g. atoms.repeat({tuple(repeat)})"
                )
        if len(passed) >= 4096:  # bounded (strained cells, many cells)
            passed.clear()
        passed[key] = True

    def _periodic_pairs(self, batch: Batch, positions: torch.Tensor, periodic: torch.Tensor):
        """Pairs of periodic structures via ASE, cached per geometry: (i [P], j [P], shift vectors [P, 3])."""
        structures = torch.nonzero(periodic).flatten().tolist()
        return batch_neighbours(
            self.neighbour_cache, batch, positions[0], structures, self.cutoff, check=self._check_cell
        )

    def neighbours(self, batch: Batch, positions: torch.Tensor):
        """Pair indices (i [P], j [P]) and shift vectors [P, 3] (None if no periodic structure)."""
        periodic = batch.pbc.any(dim=1)
        n_periodic = int(periodic.sum())
        if n_periodic == 0:
            i, j = self._molecular_pairs(batch, ~periodic)
            return i, j, None
        pi, pj, shift = self._periodic_pairs(batch, positions, periodic)
        if n_periodic == batch.n_structures:
            return pi, pj, shift
        mi, mj = self._molecular_pairs(batch, ~periodic)
        zeros = torch.zeros(mi.shape[0], 3, device=shift.device, dtype=shift.dtype)
        return torch.cat([mi, pi]), torch.cat([mj, pj]), torch.cat([zeros, shift])

    # -- model -------------------------------------------------------------------------
    def _pairs(self, batch: Batch, positions: torch.Tensor):
        """Pairs within the cutoff: (i [P], j [P], vectors r_ij [M, P, 3] Å, distances [M, P] Å).

        Raises GeometryError for atoms closer than ``min_distance``.
        """
        i, j, shift = self.neighbours(batch, positions)
        vectors = positions[:, j] - positions[:, i]  # [M, P, 3]
        if shift is not None:
            vectors = vectors + shift
        distances = vectors.pow(2).sum(-1).clamp_min(1e-12).sqrt()  # [M, P]
        with torch.no_grad():
            close = distances.detach().amin(0)
            far = close >= self.cutoff
            if self.min_distance > 0 and distances.numel() and bool((close < self.min_distance).any()):
                k = int(torch.argmin(close))
                s = int(batch.structure_index[i[k]])
                start = int((batch.structure_index < s).sum())
                raise GeometryError(
                    f"structure {s}: atoms {int(i[k]) - start} and {int(j[k]) - start} are "
                    f"{float(close[k]):.3g} Å apart, closer than min_distance={self.min_distance:g} Å "
                    "(overlapping atoms)",
                    structures=batch.structure_index[i[close < self.min_distance]].tolist(),
                )
            drop = bool(far.any())
        if drop:  # pairs beyond the cutoff contribute nothing: drop them
            keep = ~far
            i, j, vectors, distances = i[keep], j[keep], vectors[:, keep], distances[:, keep]
        return i, j, vectors, distances

    def _gaussians(self, distances: torch.Tensor) -> torch.Tensor:
        """exp(−γ (d − c_k)²): [..., P] Å -> [..., P, K]."""
        return torch.exp(-self.rbf_gamma * (distances.unsqueeze(-1) - self.rbf_centers) ** 2)

    def forward(self, batch: Batch, positions: torch.Tensor) -> torch.Tensor:
        """Raw energies [M, B] from member views of the positions [M, N, 3]."""
        M = self.n_members
        if positions.dim() != 3 or positions.shape[0] != M or positions.shape[2] != 3:
            raise ValueError(f"positions must have shape [{M}, N, 3], got {tuple(positions.shape)}")
        species = self.species_index(batch.numbers)
        i, j, _, distances = self._pairs(batch, positions)
        rbf = self._gaussians(distances) * cosine_cutoff(distances, self.cutoff).unsqueeze(-1)  # [M, P, K]
        return self._network(batch, species, i, j, rbf)

    def fixed_geometry(self, batch: Batch) -> FixedGeometry:
        """The batch's pairs, each unordered pair once, cut-off radial basis φ [P, K] and ∂φ/∂d [P, K] (training)."""
        self.species_index(batch.numbers)
        with torch.no_grad():
            i, j, vectors, distances = self._pairs(batch, batch.positions.unsqueeze(0))
            # each unordered pair once: (i, j, r) and (j, i, -r) share their filter, w_ij = w_ji
            # (no atom meets its own image: cells are at least the cutoff wide; a pair the list gave in one
            # direction only can only sit at the cutoff, where φ and ∂φ/∂d vanish)
            once = i < j
            i, j, d = i[once], j[once], distances[0][once]
            unit = vectors[0][once] / d.unsqueeze(-1)
            gaussians = self._gaussians(d)  # [P, K]
            cut = cosine_cutoff(d, self.cutoff).unsqueeze(-1)
            dcut = (-0.5 * math.pi / self.cutoff * torch.sin(d * (math.pi / self.cutoff))).unsqueeze(-1)
            derivatives = gaussians * (dcut - 2.0 * self.rbf_gamma * (d.unsqueeze(-1) - self.rbf_centers) * cut)
        return FixedGeometry(i, j, gaussians * cut, derivatives, unit, batch.positions.shape[0])

    def geometry_energies(self, batch: Batch, geometry: FixedGeometry, features: torch.Tensor) -> torch.Tensor:
        """Raw energies [M, B] from the fixed geometry's radial features: member views [M, P, K], or one
        [P, K] shared by all members (batched MD, :mod:`advsample.dynamics`: the gradient with respect to
        it is the members' sum, all the committee mean's forces need; pair-level work done once for all)."""
        species = self.species_index(batch.numbers)
        if features.dim() == 2:
            return self._shared_network(batch, species, geometry.i, geometry.j, features)
        return self._network(batch, species, geometry.i, geometry.j, features, both_directions=True)

    def _shared_network(self, batch: Batch, species: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                        rbf: torch.Tensor) -> torch.Tensor:
        """Raw energies [M, B] from radial features [P, K] shared by the members, each unordered pair once.

        The energies of ``_network(..., both_directions=True)`` with the features expanded to [M, P, K]
        (float rounding aside), with the pair-level work done once for all members: the first
        interaction's per-element sums Φ [N·S, K] once; the later filters as one [P, K] × [K, M·F]
        product, and their messages gathered and scattered atom-major, as rows of M·F features
        ([N, M·F]: a scatter moves whole rows; only atom-sized tensors are transposed).
        """
        M, F, K = self.n_members, self.n_features, self.n_rbf
        N, S = species.shape[0], len(self.species)
        x = self.embedding[:, species, :]  # [M, N, F]
        for t in range(self.n_interactions):
            filters = self.filters[:, :, t * F : (t + 1) * F]  # [M, K, F]
            if t == 0 and N * S <= 2 * i.shape[0]:
                channels = rbf.new_zeros(N * S, K).index_add(0, i * S + species[j], rbf)
                channels = channels.index_add(0, j * S + species[i], rbf)  # [N·S, K]
                aggregated = torch.matmul(channels.view(N, S * K), self._element_filters(filters))  # [M, N, F]
            else:
                w = rbf @ filters.transpose(0, 1).reshape(K, M * F)  # [P, M·F]
                y = torch.bmm(x, self.in2f[t]).transpose(0, 1).reshape(N, M * F)  # [N, M·F]
                rows = y.new_zeros(N, M * F).index_add(0, i, y.index_select(0, j) * w)
                rows = rows.index_add(0, j, y.index_select(0, i) * w)
                aggregated = rows.view(N, M, F).transpose(0, 1)  # [M, N, F]
            x = self._update(t, x, aggregated)
        return self._readout(batch, x)

    def _element_filters(self, filters: torch.Tensor) -> torch.Tensor:
        """[M, S·K, F] the first interaction's filters [M, K, F] times each element's embedding through in2f."""
        M, F, K, S = self.n_members, self.n_features, self.n_rbf, len(self.species)
        y = torch.bmm(self.embedding, self.in2f[0])  # [M, S, F]
        return (y.unsqueeze(2) * filters.unsqueeze(1)).reshape(M, S * K, F)

    def _update(self, t: int, x: torch.Tensor, aggregated: torch.Tensor) -> torch.Tensor:
        """Interaction ``t``'s atom update: x + dense(ssp(f2out(aggregated))), [M, N, F]."""
        v = shifted_softplus(torch.baddbmm(self.f2out_b[t], aggregated, self.f2out_w[t]))
        return x + torch.baddbmm(self.dense_b[t], v, self.dense_w[t])

    def _readout(self, batch: Batch, x: torch.Tensor) -> torch.Tensor:
        """Raw energies [M, B]: atomwise readout of x [M, N, F] summed per structure."""
        h = shifted_softplus(torch.baddbmm(self.out_b1, x, self.out_w1))
        atom_energies = torch.baddbmm(self.out_b2, h, self.out_w2).squeeze(-1)  # [M, N]
        energies = atom_energies.new_zeros(x.shape[0], batch.n_structures)
        return energies.index_add(1, batch.structure_index, atom_energies)

    def _network(self, batch: Batch, species: torch.Tensor, i: torch.Tensor, j: torch.Tensor,
                 rbf: torch.Tensor, both_directions: bool = False) -> torch.Tensor:
        """Raw energies [M, B] from embedding rows [N], pairs (i, j) [P] and cut-off radial features [M, P, K].

        ``both_directions``: each unordered pair is listed once and acts on i from j and on j from i
        (its filter is symmetric): half the pair-level filter work of listing both.
        """
        M, F, K = self.n_members, self.n_features, self.n_rbf
        N, S = species.shape[0], len(self.species)
        x = self.embedding[:, species, :]  # [M, N, F]
        for t in range(self.n_interactions):
            filters = self.filters[:, :, t * F : (t + 1) * F]  # [M, K, F]
            if t == 0 and N * S <= i.shape[0] * (2 if both_directions else 1):
                # x_j is still the embedding of j's element: sum the radial features per (atom, neighbour
                # element) first, Φ [M, N·S, K], then filter; the same energies, atom- instead of pair-sized
                channels = rbf.new_zeros(M, N * S, K).index_add(1, i * S + species[j], rbf)
                if both_directions:
                    channels = channels.index_add(1, j * S + species[i], rbf)
                # Σ_s Σ_k Φ[n, s, k] W[k, f] y[s, f] as one product with the [M, S·K, F] element filters
                aggregated = torch.bmm(channels.view(M, N, S * K), self._element_filters(filters))  # [M, N, F]
            else:
                w = torch.bmm(rbf, filters)  # [M, P, F]
                y = torch.bmm(x, self.in2f[t])  # [M, N, F]
                aggregated = torch.zeros_like(y).index_add(1, i, y.index_select(1, j) * w)
                if both_directions:
                    aggregated = aggregated.index_add(1, j, y.index_select(1, i) * w)
            x = self._update(t, x, aggregated)
        return self._readout(batch, x)

"""matforge's own machine-learned interatomic potential (Behler & Parrinello, PRL 98, 146401).

The energy of a structure is a sum of atomic energies, each the output of a small
neural network of the atom's element fed with the atom's symmetry functions
(:mod:`matforge.engine.models.descriptors`), plus a per-element reference energy fitted
by least squares first so that the networks learn only what composition does not
explain. Forces and stress are exact derivatives of that energy, by autograd.

:class:`BPPotential` is one such model and :class:`BPEnsemble` several, from different
seeds and bootstrap samples of the training structures, whose spread in energy per atom
says how far a structure is from what the potential has seen. Both are scikit-learn
style estimators (``fit`` returns ``self``, learned state ends in ``_``) that train on
ASE ``Atoms`` carrying reference energies and forces, and :class:`BPCalculator` runs
either as an ASE calculator (relaxations, molecular dynamics).

The training loop never differentiates the descriptors: their Jacobian with respect to
the pair vectors is computed once, and each epoch the forces are that Jacobian
contracted with the networks' gradients, so an epoch costs a few small matrix products.
"""

from __future__ import annotations

import contextlib
import math
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import chemical_symbols
from sklearn.base import BaseEstimator
from torch import Tensor

from matforge.engine.models.descriptors import (
    NeighbourGraph,
    SymmetryFunctions,
    concatenate_graphs,
)
from matforge.engine.settings import get_settings

DTYPE = torch.float64

FILE_FORMAT = "matforge.bp-potential/1"
"""Tag of a saved potential; :meth:`BPPotential.load` refuses anything else."""

ACTIVATIONS = ("tanh", "silu")

_JACOBIAN_BUDGET = 2**24
"""Largest number of float64 values (128 MiB) one block of the Jacobian product may hold."""

_JACOBIAN_ATOMS = 2048
"""Atoms whose Jacobians are built together while fitting (about 130 MB of intermediates
with the default descriptor of two elements)."""


@contextlib.contextmanager
def _torch_threads():
    """At most the process's share of torch threads (``MATFORGE_THREADS``, else
    cores // workers)."""
    n = get_settings().threads_per_process()
    before = torch.get_num_threads()
    if n < before:
        torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _number(value) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _plain(value):
    """``value`` as the plain Python types ``torch.load(weights_only=True)`` reads back."""
    if isinstance(value, (tuple, list, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _activate(name: str, z: Tensor) -> tuple[Tensor, Tensor]:
    """The activation and its derivative at ``z``."""
    if name == "tanh":
        a = torch.tanh(z)
        return a, 1.0 - a * a
    s = torch.sigmoid(z)
    return z * s, s * (1.0 + z * (1.0 - s))


class ElementNetworks(torch.nn.Module):
    """Atomic energies from descriptors: one MLP per element and member, batched over members.

    ``forward`` maps descriptors ``n_atoms x n_features`` and the element index of each
    atom (``n_atoms``) to atomic energies ``n_members x n_atoms`` in eV:
    ``reference[m, e] + energy_scale * mlp_{m,e}((G - feature_mean[e]) / feature_scale[e])``
    and, with ``gradient``, also each atomic energy's gradient with respect to its own
    descriptor, ``n_members x n_atoms x n_features``. That gradient is written out layer by
    layer rather than left to autograd, so that a loss on forces needs only a first-order
    backward pass through it.
    """

    def __init__(
        self,
        n_members: int,
        n_elements: int,
        n_features: int,
        hidden: Sequence[int],
        activation: str,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.activation = activation
        sizes = [n_features, *hidden, 1]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for _ in range(n_elements):
            for n_in, n_out in zip(sizes[:-1], sizes[1:]):
                bound = 1.0 / math.sqrt(n_in)
                w = torch.rand(n_members, n_in, n_out, generator=generator, dtype=DTYPE)
                b = torch.rand(n_members, 1, n_out, generator=generator, dtype=DTYPE)
                self.weights.append(torch.nn.Parameter((2 * w - 1) * bound))
                self.biases.append(torch.nn.Parameter((2 * b - 1) * bound))
        self.n_layers = len(sizes) - 1
        self.register_buffer("feature_mean", torch.zeros(n_elements, n_features, dtype=DTYPE))
        self.register_buffer("feature_scale", torch.ones(n_elements, n_features, dtype=DTYPE))
        self.register_buffer("energy_scale", torch.ones((), dtype=DTYPE))
        self.register_buffer("reference", torch.zeros(n_members, n_elements, dtype=DTYPE))

    def forward(
        self, descriptors: Tensor, species: Tensor, gradient: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        n_members, n_elements = self.reference.shape
        n_atoms, n_features = descriptors.shape
        energies = descriptors.new_zeros(n_members, n_atoms)
        grads = descriptors.new_zeros(n_members, n_atoms, n_features) if gradient else None
        for e in range(n_elements):
            index = torch.nonzero(species == e).flatten()
            if len(index) == 0:
                continue
            h = (descriptors[index] - self.feature_mean[e]) / self.feature_scale[e]
            slopes = []
            for layer in range(self.n_layers):
                k = e * self.n_layers + layer
                h = torch.matmul(h, self.weights[k]) + self.biases[k]
                if layer < self.n_layers - 1:
                    h, slope = _activate(self.activation, h)
                    slopes.append(slope)
            atomic = h[..., 0] * self.energy_scale + self.reference[:, e : e + 1]
            energies = energies.index_add(1, index, atomic)
            if gradient:
                first = e * self.n_layers
                # d out / d h_last = w_last, then back through each layer's slope and weights
                back = self.weights[first + self.n_layers - 1].transpose(1, 2)
                for layer in range(self.n_layers - 2, -1, -1):
                    back = torch.matmul(back * slopes[layer], self.weights[first + layer].mT)
                scale = self.energy_scale / self.feature_scale[e]
                grads = grads.index_add(1, index, back * scale)
        return (energies, grads) if gradient else energies


def _reference_data(images: Sequence[Atoms]) -> tuple[list[float], list[np.ndarray | None]]:
    """Energies (eV) and forces (eV/Å, or None where the image has none) of ``images``."""
    if isinstance(images, Atoms) or not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError("images: need a non-empty list of ase.Atoms with reference energies")
    energies, forces = [], []
    for k, atoms in enumerate(images):
        if not isinstance(atoms, Atoms):
            raise ValueError(f"images[{k}]: not an ase.Atoms but {type(atoms).__name__}")
        if atoms.calc is None:
            raise ValueError(
                f"images[{k}] ({atoms.get_chemical_formula()}): no energy; attach the "
                "reference calculator or a SinglePointCalculator with its results"
            )
        energy = float(atoms.get_potential_energy())
        if not math.isfinite(energy):
            raise ValueError(f"images[{k}] ({atoms.get_chemical_formula()}): energy {energy}")
        try:
            f = np.asarray(atoms.get_forces(), dtype=float)
        except (PropertyNotImplementedError, NotImplementedError):
            f = None
        if f is not None and (f.shape != (len(atoms), 3) or not np.isfinite(f).all()):
            raise ValueError(
                f"images[{k}] ({atoms.get_chemical_formula()}): forces must be finite with "
                f"shape ({len(atoms)}, 3), got shape {f.shape}"
            )
        energies.append(energy)
        forces.append(f)
    return energies, forces


def _atom_jacobian(
    descriptor: SymmetryFunctions, vectors: Tensor, graph: NeighbourGraph
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Descriptors and their derivatives with respect to the atom positions.

    ``graph`` may be the union of many structures, ``vectors`` its pair vectors
    (``n_pairs x 3``). Returns the descriptors ``n_atoms x n_features`` and, for each pair
    of atoms ``(i, k)`` where ``G_i`` depends on ``R_k``, the rows ``i`` and ``k``
    (``n_rows``) and ``dG_i / dR_k``, ``n_rows x n_features x 3``; periodic images of
    ``k`` are summed, which in small cells makes far fewer rows than pairs.

    The chain rule runs through the two stages of the descriptor: each pair's terms
    depend on its own vector only (a ``n_terms x 3`` Jacobian per pair, three passes),
    and each atom's descriptor on its own sums only (``n_features x n_terms`` per atom and
    element), so nothing of size pairs x features x terms is ever formed.
    """
    vectors = vectors.detach()
    n_atoms, n_el = graph.n_atoms, len(descriptor.elements)
    centre, neighbour = graph.centre, graph.neighbour
    element = graph.species[neighbour]
    terms = descriptor.pair_terms(vectors)
    sums = descriptor.atom_sums(terms, graph)
    G = descriptor.combine(sums)
    # d terms_p / d vector_p: n_pairs x n_terms x 3, forward mode by the double-backward
    # trick (torch's own forward mode loads decompositions that warn on first use)
    leaves = vectors.clone().requires_grad_(True)
    with torch.enable_grad():
        cotangent = torch.zeros_like(terms, requires_grad=True)
        (pulled,) = torch.autograd.grad(
            descriptor.pair_terms(leaves), leaves, cotangent, create_graph=True
        )
        columns = []
        for c in range(3):
            tangent = torch.zeros_like(vectors)
            tangent[:, c] = 1.0
            (column,) = torch.autograd.grad(pulled, cotangent, tangent, retain_graph=c < 2)
            columns.append(column)
    term_jacobian = torch.stack(columns, dim=-1)
    # dG_i / d sums_i: n_atoms x n_features x n_elements x n_terms
    sum_jacobian = torch.func.vmap(torch.func.jacrev(descriptor.combine))(sums)
    n_terms = term_jacobian.shape[1]

    # rows (i, k != i): pairs from i to images of k share dG_i/dsums_{i, element of k}
    c, nb = centre.numpy(), neighbour.numpy()
    keys, inverse = np.unique(c * n_atoms + nb, return_inverse=True)
    inverse = torch.as_tensor(inverse)
    per_row = torch.zeros(len(keys), n_terms, 3, dtype=DTYPE).index_add(
        0, inverse, term_jacobian
    )
    row_i = torch.as_tensor(keys // n_atoms)
    row_element = torch.zeros(len(keys), dtype=torch.long).index_copy(0, inverse, element)
    blocks = []
    # in blocks, so the gathered per-row sum Jacobians stay small
    step = max(1, _JACOBIAN_BUDGET // (G.shape[1] * n_terms))
    for start in range(0, len(keys), step):
        part = slice(start, start + step)
        a = sum_jacobian[row_i[part], :, row_element[part], :]
        blocks.append(torch.bmm(a, per_row[part]))
    # rows (i, i): the pair vector is R_k - R_i, so the centre moves every sum backwards
    per_atom = torch.zeros(n_atoms * n_el, n_terms, 3, dtype=DTYPE).index_add(
        0, centre * n_el + element, term_jacobian
    ).reshape(n_atoms, n_el * n_terms, 3)
    own = -torch.bmm(sum_jacobian.reshape(n_atoms, G.shape[1], -1), per_atom)

    rows = np.concatenate([keys, np.arange(n_atoms) * (n_atoms + 1)])
    unique, where = np.unique(rows, return_inverse=True)
    jacobian = torch.zeros(len(unique), G.shape[1], 3, dtype=DTYPE).index_add(
        0, torch.as_tensor(where), torch.cat([*blocks, own])
    )
    return (
        G,
        torch.as_tensor(unique // n_atoms),
        torch.as_tensor(unique % n_atoms),
        jacobian,
    )


class BPPotential(BaseEstimator):
    """A Behler–Parrinello neural-network potential.

    Parameters
    ----------
    hidden : widths of the hidden layers of each element's network
    cutoff : radial cutoff of the symmetry functions, Å
    angular_cutoff : cutoff of the angular symmetry functions, Å; ``None``: ``cutoff``
    n_radial : radial Gaussians per neighbour element
    angular_etas : decay constants of the angular functions, Å^-2
    zetas : angular exponents (whole numbers, 1 to 8)
    activation : ``"tanh"`` or ``"silu"``; both are smooth, so forces are continuous
    epochs : full-batch Adam steps, the learning rate annealed to zero on a cosine
    lr : initial Adam learning rate
    force_weight : weight of the mean squared force error (eV²/Å²) against that of the
        energy per atom (eV²) in the loss; 0 fits energies only
    weight_decay : L2 penalty on the network weights (AdamW's decoupled decay)
    random_state : seed of the initial weights (and of the bootstrap in an ensemble); the
        same seed and data give the same potential

    Attributes
    ----------
    descriptor_ : the fitted :class:`~matforge.engine.models.descriptors.SymmetryFunctions`
    networks_ : the fitted :class:`ElementNetworks`
    elements_ : chemical symbols of the training data, by atomic number
    train_rmse_ : root mean squared errors of the prediction (an ensemble's mean) on the
        training images, ``{"energy_per_atom": eV, "forces": eV/Å}``
    """

    n_members = 1

    def __init__(
        self,
        hidden: Sequence[int] = (32, 32),
        cutoff: float = 5.0,
        angular_cutoff: float | None = None,
        n_radial: int = 8,
        angular_etas: Sequence[float] = (0.01, 0.1),
        zetas: Sequence[int] = (1, 2, 4),
        activation: str = "tanh",
        epochs: int = 300,
        lr: float = 1e-2,
        force_weight: float = 0.1,
        weight_decay: float = 0.0,
        random_state: int | None = None,
    ):
        self.hidden = hidden
        self.cutoff = cutoff
        self.angular_cutoff = angular_cutoff
        self.n_radial = n_radial
        self.angular_etas = angular_etas
        self.zetas = zetas
        self.activation = activation
        self.epochs = epochs
        self.lr = lr
        self.force_weight = force_weight
        self.weight_decay = weight_decay
        self.random_state = random_state

    # -- fitting ---------------------------------------------------------------------

    def _check_params(self) -> None:
        try:
            hidden = list(self.hidden)
        except TypeError:
            hidden = []
        if not hidden or not all(_whole(h) and h >= 1 for h in hidden):
            raise ValueError(f"hidden: need one or more positive layer widths, got {self.hidden}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: one of {list(ACTIVATIONS)}, got {self.activation!r}")
        if not (_whole(self.epochs) and self.epochs >= 1):
            raise ValueError(f"epochs: must be a whole number >= 1, got {self.epochs!r}")
        if not (_number(self.lr) and self.lr > 0):
            raise ValueError(f"lr: must be a positive number, got {self.lr!r}")
        if not (_number(self.force_weight) and self.force_weight >= 0):
            raise ValueError(f"force_weight: must be a number >= 0, got {self.force_weight!r}")
        if not (_number(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay: must be a number >= 0, got {self.weight_decay!r}")
        if not (self.random_state is None or _whole(self.random_state)):
            raise ValueError(f"random_state: a whole number or None, got {self.random_state!r}")

    def _seed(self) -> int:
        if self.random_state is not None:
            return int(self.random_state)
        return int(np.random.SeedSequence().generate_state(1)[0])

    def _sample_weights(self, n_images: int, rng: np.random.Generator) -> np.ndarray:
        """How often each member sees each training image, shape (n_members, n_images)."""
        return np.ones((self.n_members, n_images))

    def _make_descriptor(self, elements: Sequence[str]) -> SymmetryFunctions:
        return SymmetryFunctions(
            elements,
            cutoff=self.cutoff,
            angular_cutoff=self.angular_cutoff,
            n_radial=self.n_radial,
            angular_etas=self.angular_etas,
            zetas=self.zetas,
        )

    def fit(self, images: Sequence[Atoms]) -> BPPotential:
        """Fit to the energies (and forces, where present) of ``images``.

        Parameters
        ----------
        images : structures whose calculator (a ``SinglePointCalculator`` or a live one)
            gives the reference energy, eV, and optionally forces, eV/Å

        Returns
        -------
        self

        Raises
        ------
        ValueError
            When the hyperparameters or the images cannot be used; the message names which.
        """
        self._check_params()
        energies, forces = _reference_data(images)
        numbers = sorted({int(z) for atoms in images for z in atoms.numbers})
        elements = [chemical_symbols[z] for z in numbers]
        descriptor = self._make_descriptor(elements)
        seed = self._seed()
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)

        with _torch_threads():
            data = self._training_tensors(descriptor, images, energies, forces)
            weights = self._sample_weights(len(images), rng)
            networks = ElementNetworks(
                self.n_members, len(elements), descriptor.n_features, tuple(self.hidden),
                self.activation, generator,
            )
            self._standardise(networks, data, weights)
            self._train(networks, data, torch.as_tensor(weights, dtype=DTYPE))
        networks.requires_grad_(False)
        self.descriptor_ = descriptor
        self.networks_ = networks
        self.elements_ = elements
        return self

    @staticmethod
    def _training_tensors(descriptor, images, energies, forces) -> dict[str, Tensor]:
        """The training set as flat tensors: descriptors and their Jacobians, each atom's
        image, and the reference energies and forces.

        The Jacobians take some 1.3 kB per pair of atoms within the cutoff of one another
        (images merged); they are built a group of images at a time so that the
        intermediates stay near :data:`_JACOBIAN_ATOMS` atoms' worth.
        """
        G, rows_i, rows_k, jacobian, species = [], [], [], [], []
        force_rows, has_force = [], []
        group, offset = [], 0

        def flush():
            nonlocal offset
            union = concatenate_graphs([g for g, _, _ in group])
            positions = torch.cat([p for _, p, _ in group])
            cells = torch.cat([c.expand(len(g.centre), 3, 3) for g, _, c in group])
            vectors = (
                positions[union.neighbour] - positions[union.centre]
                + torch.einsum("pc,pcd->pd", union.shift, cells)
            )
            g, i, k, jac = _atom_jacobian(descriptor, vectors, union)
            G.append(g)
            rows_i.append(i + offset)
            rows_k.append(k + offset)
            jacobian.append(jac)
            species.append(union.species)
            offset += union.n_atoms
            group.clear()

        for k, (atoms, f) in enumerate(zip(images, forces)):
            try:
                graph = descriptor.graph(atoms)
            except ValueError as error:
                raise ValueError(f"images[{k}]: {error}") from None
            group.append((
                graph,
                torch.as_tensor(atoms.get_positions(), dtype=DTYPE),
                torch.as_tensor(atoms.cell.array, dtype=DTYPE),
            ))
            force_rows.append(torch.zeros(len(atoms), 3, dtype=DTYPE) if f is None
                              else torch.as_tensor(f, dtype=DTYPE))
            has_force.append(torch.full((len(atoms),), f is not None, dtype=torch.bool))
            if sum(g.n_atoms for g, _, _ in group) >= _JACOBIAN_ATOMS:
                flush()
        if group:
            flush()
        image_of_atom = torch.repeat_interleave(
            torch.arange(len(images)), torch.tensor([len(a) for a in images])
        )
        return {
            "descriptors": torch.cat(G),
            "jacobian": torch.cat(jacobian),
            "rows_i": torch.cat(rows_i),
            "rows_k": torch.cat(rows_k),
            "image_of_atom": image_of_atom,
            "species": torch.cat(species),
            "n_atoms": torch.bincount(image_of_atom).to(DTYPE),
            "energies": torch.tensor(energies, dtype=DTYPE),
            "forces": torch.cat(force_rows),
            "has_force": torch.cat(has_force),
        }

    def _standardise(self, networks: ElementNetworks, data: dict, weights: np.ndarray) -> None:
        """Feature statistics per element, reference energies per member by (weighted) least
        squares on the composition, and the scale of what the networks must learn."""
        G, species = data["descriptors"], data["species"]
        n_elements = networks.reference.shape[1]
        for e in range(n_elements):
            rows = G[species == e]
            networks.feature_mean[e] = rows.mean(dim=0)
            scale = rows.std(dim=0, correction=0)
            networks.feature_scale[e] = torch.where(scale > 1e-8, scale, 1.0)
        counts = torch.zeros(len(data["energies"]), n_elements, dtype=DTYPE)
        counts.index_put_((data["image_of_atom"], species), torch.ones(len(species), dtype=DTYPE),
                          accumulate=True)
        C, E = counts.numpy(), data["energies"].numpy()
        residual = []
        for m, w in enumerate(weights):
            root = np.sqrt(w)[:, None]
            reference = np.linalg.lstsq(C * root, E * root[:, 0], rcond=None)[0]
            networks.reference[m] = torch.as_tensor(reference)
            residual.append((E - C @ reference) / C.sum(axis=1))
        spread = float(np.std(np.concatenate(residual)))
        networks.energy_scale.fill_(max(spread, 1e-3))

    def _train(self, networks: ElementNetworks, data: dict, weights: Tensor) -> None:
        """Full-batch AdamW on ``mean (dE/N)^2 + force_weight * mean |dF|^2 / 3``, each
        member on its own sample weights ``n_members x n_images``."""
        G = data["descriptors"]
        atom_weights = weights[:, data["image_of_atom"]] * data["has_force"].to(DTYPE)
        use_forces = self.force_weight > 0 and bool(atom_weights.sum() > 0)
        energy_norm = weights.sum(dim=1)
        force_norm = 3 * atom_weights.sum(dim=1).clamp(min=1e-12)
        optimizer = torch.optim.AdamW(
            networks.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        for _ in range(int(self.epochs)):
            optimizer.zero_grad()
            energy_err, force_err = self._errors(networks, G, data, use_forces)
            loss = (weights * energy_err**2).sum(dim=1) / energy_norm
            if use_forces:
                f2 = (force_err**2).sum(dim=-1)
                loss = loss + self.force_weight * (atom_weights * f2).sum(dim=1) / force_norm
            loss.sum().backward()
            optimizer.step()
            schedule.step()
        # of the members' mean, which is what the potential predicts
        energy_err, force_err = self._errors(networks, G, data, True)
        energy_err, force_err = energy_err.detach().mean(0), force_err.detach().mean(0)
        mask = data["has_force"]
        self.train_rmse_ = {
            "energy_per_atom": float(energy_err.pow(2).mean().sqrt()),
            "forces": float(force_err[mask].pow(2).mean().sqrt()) if mask.any() else math.nan,
        }

    @staticmethod
    def _errors(networks: ElementNetworks, G: Tensor, data: dict, with_forces: bool):
        """Energy-per-atom errors ``n_members x n_images`` and force errors
        ``n_members x n_atoms x 3`` (None without forces) on the training set, from the
        descriptors ``G``, ``n_atoms x n_features``."""
        if not with_forces:
            atomic = networks(G, data["species"])
        else:
            atomic, dE_dG = networks(G, data["species"], gradient=True)
        n_members, n_atoms = atomic.shape
        n_per_image = data["n_atoms"]
        energy = atomic.new_zeros(n_members, len(n_per_image))
        energy = energy.index_add(1, data["image_of_atom"], atomic)
        energy_err = (energy - data["energies"]) / n_per_image
        if not with_forces:
            return energy_err, None
        # dE/dR_k = sum_i dE/dG_i . dG_i/dR_k
        dE_dR = torch.einsum("mrf,rfc->mrc", dE_dG[:, data["rows_i"]], data["jacobian"])
        forces = atomic.new_zeros(n_members, n_atoms, 3).index_add(1, data["rows_k"], -dE_dR)
        return energy_err, forces - data["forces"]

    # -- prediction ------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "networks_"):
            raise ValueError(f"{type(self).__name__} is not fitted; call fit(images) first")

    def _graph(self, atoms: Atoms) -> NeighbourGraph:
        self._check_fitted()
        if not isinstance(atoms, Atoms):
            raise ValueError(f"atoms: need an ase.Atoms, got {type(atoms).__name__}")
        return self.descriptor_.graph(atoms)

    def _member_energies(
        self, atoms: Atoms, graph: NeighbourGraph, derivatives: bool = True
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Member energies ``n_members`` (eV) and the gradient of their mean with respect
        to the pair vectors, ``n_pairs x 3``, with the pair vectors themselves."""
        positions = torch.as_tensor(atoms.get_positions(), dtype=DTYPE)
        cell = torch.as_tensor(atoms.cell.array, dtype=DTYPE)
        vectors = self.descriptor_.pair_vectors(positions, cell, graph)
        with torch.set_grad_enabled(derivatives):
            vectors.requires_grad_(derivatives)
            G = self.descriptor_.from_vectors(vectors, graph)
            energies = self.networks_(G, graph.species).sum(1)
            if not derivatives:
                return energies, None, None
            (grad,) = torch.autograd.grad(energies.mean(), vectors)
        return energies.detach(), grad, vectors.detach()

    def calculate(
        self, atoms: Atoms, graph: NeighbourGraph | None = None, stress: bool = False
    ) -> dict[str, np.ndarray | float]:
        """Energy, forces and (with ``stress``) stress of ``atoms``, ASE's units and names.

        Returns
        -------
        dict
            ``energy`` (eV, the members' mean), ``energies`` (each member's, eV, shape
            (n_members,)), ``forces`` (eV/Å, shape (n_atoms, 3)) and, with ``stress``,
            ``stress`` (eV/Å^3, Voigt order xx yy zz yz xz xy, ASE's sign).
        """
        # torch's thread count is the caller's (see matforge.engine.settings.limit_threads):
        # reading the settings on every call would cost more than a small cell's forces
        if graph is None:
            graph = self._graph(atoms)
        energies, grad, vectors = self._member_energies(atoms, graph)
        forces = torch.zeros(len(atoms), 3, dtype=DTYPE)
        # the pair vector is R_neighbour - R_centre, so dE/dR_centre = -dE/dvector
        forces = forces.index_add(0, graph.centre, grad).index_add(0, graph.neighbour, -grad)
        results = {
            "energy": float(energies.mean()),
            "energies": energies.numpy(),
            "forces": forces.numpy(),
        }
        if stress:
            volume = abs(atoms.cell.volume)
            if not (atoms.pbc.all() and volume > 1e-6):
                raise PropertyNotImplementedError(
                    "stress needs a structure periodic in all three directions"
                )
            # straining every pair vector d -> d (1 + eps): dE/deps = sum_p d_p (x) dE/dd_p
            virial = vectors.T @ grad
            sigma = (0.5 * (virial + virial.T) / volume).numpy()
            results["stress"] = sigma[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
        return results

    def predict(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        """Energy (eV) and forces (eV/Å, shape (n_atoms, 3)) of ``atoms``."""
        results = self.calculate(atoms)
        return results["energy"], results["forces"]

    def predict_energy_per_atom(self, images: Sequence[Atoms], return_std: bool = False):
        """Energy per atom (eV/atom) of each structure, shape (n_images,), without forces.

        With ``return_std``, also the standard deviation over the members (zero for a
        single potential), shape (n_images,).
        """
        self._check_fitted()
        if isinstance(images, Atoms):
            images = [images]
        members = []
        with _torch_threads():
            for atoms in images:
                energies, _, _ = self._member_energies(atoms, self._graph(atoms), False)
                members.append(energies.numpy() / len(atoms))
        members = np.array(members).reshape(len(images), self.n_members)
        mean = members.mean(axis=1)
        return (mean, members.std(axis=1)) if return_std else mean

    # -- persistence -----------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the fitted potential to ``path`` (``torch.save`` of tensors and plain values)."""
        self._check_fitted()
        params = {k: _plain(v) for k, v in self.get_params().items()}
        payload = {
            "format": FILE_FORMAT,
            "class": type(self).__name__,
            "params": params,
            "elements": list(self.elements_),
            "train_rmse": {k: float(v) for k, v in getattr(self, "train_rmse_", {}).items()},
            "state": {k: v.clone() for k, v in self.networks_.state_dict().items()},
        }
        path = Path(path)
        torch.save(payload, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> BPPotential:
        """A potential written by :meth:`save`; the file is read without unpickling code.

        Raises
        ------
        ValueError
            When the file is not a saved matforge potential.
        """
        try:
            payload = torch.load(Path(path), weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
            raise ValueError(f"{path}: not a readable potential file ({error})") from None
        if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
            raise ValueError(f"{path}: not a saved matforge potential ({FILE_FORMAT})")
        kinds = {c.__name__: c for c in (BPPotential, BPEnsemble)}
        kind = kinds.get(payload["class"])
        if kind is None or not issubclass(kind, cls):
            raise ValueError(f"{path}: holds a {payload['class']}, not a {cls.__name__}")
        try:
            model = kind(**payload["params"])
        except TypeError as error:
            raise ValueError(f"{path}: parameters this version does not know ({error})") from None
        model._check_params()
        descriptor = model._make_descriptor(payload["elements"])
        networks = ElementNetworks(
            model.n_members, len(payload["elements"]), descriptor.n_features,
            tuple(model.hidden), model.activation,
        )
        networks.load_state_dict(payload["state"])
        networks.requires_grad_(False)
        model.descriptor_ = descriptor
        model.networks_ = networks
        model.elements_ = list(payload["elements"])
        model.train_rmse_ = dict(payload["train_rmse"])
        return model


class BPEnsemble(BPPotential):
    """Several Behler–Parrinello potentials whose spread is the uncertainty.

    Members differ in their initial weights and, with ``bootstrap``, in a resample (with
    replacement) of the training structures, and train together as one batched network.
    The energy, forces and stress are the members' means; the standard deviation of the
    members' energies per atom says how far a structure lies from the training data.

    Parameters
    ----------
    n_models : number of members, at least 2
    bootstrap : train each member on a bootstrap resample of the images (otherwise only
        the initial weights differ)
    hidden, cutoff, angular_cutoff, n_radial, angular_etas, zetas, activation, epochs, lr,
    force_weight, weight_decay, random_state : as :class:`BPPotential`
    """

    def __init__(
        self,
        n_models: int = 4,
        bootstrap: bool = True,
        hidden: Sequence[int] = (32, 32),
        cutoff: float = 5.0,
        angular_cutoff: float | None = None,
        n_radial: int = 8,
        angular_etas: Sequence[float] = (0.01, 0.1),
        zetas: Sequence[int] = (1, 2, 4),
        activation: str = "tanh",
        epochs: int = 300,
        lr: float = 1e-2,
        force_weight: float = 0.1,
        weight_decay: float = 0.0,
        random_state: int | None = None,
    ):
        super().__init__(
            hidden=hidden, cutoff=cutoff, angular_cutoff=angular_cutoff, n_radial=n_radial,
            angular_etas=angular_etas, zetas=zetas, activation=activation, epochs=epochs,
            lr=lr, force_weight=force_weight, weight_decay=weight_decay,
            random_state=random_state,
        )
        self.n_models = n_models
        self.bootstrap = bootstrap

    @property
    def n_members(self) -> int:
        return int(self.n_models)

    def _check_params(self) -> None:
        if not (_whole(self.n_models) and self.n_models >= 2):
            raise ValueError(
                f"n_models: an ensemble needs a whole number >= 2, got {self.n_models!r}"
            )
        super()._check_params()

    def _sample_weights(self, n_images: int, rng: np.random.Generator) -> np.ndarray:
        if not self.bootstrap:
            return np.ones((self.n_members, n_images))
        if n_images < 2:
            raise ValueError("images: a bootstrap ensemble needs at least 2 images")
        draws = rng.integers(0, n_images, size=(self.n_members, n_images))
        return np.stack([np.bincount(row, minlength=n_images) for row in draws]).astype(float)

    def predict(self, atoms: Atoms, return_std: bool = False):
        """Mean energy (eV) and forces (eV/Å, shape (n_atoms, 3)) of the members; with
        ``return_std`` also the members' standard deviation of the energy per atom (eV/atom).
        """
        results = self.calculate(atoms)
        if not return_std:
            return results["energy"], results["forces"]
        return results["energy"], results["forces"], float(np.std(results["energies"]) / len(atoms))


class BPCalculator(Calculator):
    """ASE calculator running a fitted :class:`BPPotential` or :class:`BPEnsemble`.

    Results are ``energy`` (= ``free_energy``), ``forces``, ``stress`` (structures
    periodic in three directions) and, for an ensemble, ``energy_std``: the members'
    standard deviation of the total energy, eV.

    Parameters
    ----------
    model : a fitted potential
    skin : the neighbour list is built to ``cutoff + skin`` and reused, exactly, until an
        atom has moved ``skin / 2`` or the cell, the elements or the periodicity change;
        worth it in molecular dynamics where listing neighbours is slower than the model
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energy_std"]

    def __init__(self, model: BPPotential, skin: float = 0.5, **kwargs):
        if not isinstance(model, BPPotential):
            raise ValueError(f"model: need a BPPotential or BPEnsemble, got {type(model).__name__}")
        model._check_fitted()
        if not (math.isfinite(skin) and skin >= 0):
            raise ValueError(f"skin: must be >= 0 Å, got {skin!r}")
        super().__init__(**kwargs)
        self.model = model
        self.skin = float(skin)
        self._graph: NeighbourGraph | None = None
        self._graph_key = None
        self.neighbour_list_builds = 0
        """How many neighbour lists this calculator has built."""

    def _neighbours(self, atoms: Atoms) -> NeighbourGraph:
        positions = atoms.get_positions()
        key = (atoms.numbers.tobytes(), atoms.pbc.tobytes(), atoms.cell.array.tobytes())
        if self._graph is not None and key == self._graph_key and len(positions) == len(
            self._graph_positions
        ):
            moved = np.sqrt(((positions - self._graph_positions) ** 2).sum(axis=1)).max()
            if moved < 0.5 * self.skin:
                return self._graph
        self._graph = self.model.descriptor_.graph(atoms, skin=self.skin)
        self.neighbour_list_builds += 1
        self._graph_key = key
        self._graph_positions = positions.copy()
        return self._graph

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        want_stress = "stress" in properties
        results = self.model.calculate(self.atoms, self._neighbours(self.atoms), want_stress)
        self.results = {
            "energy": results["energy"],
            "free_energy": results["energy"],
            "forces": results["forces"],
        }
        if want_stress:
            self.results["stress"] = results["stress"]
        if self.model.n_members > 1:
            self.results["energy_std"] = float(np.std(results["energies"]))

from __future__ import annotations

import numpy as np

from matforge.engine.materials.generate import (
    Candidate,
    DecorationGenerator,
    MutationGenerator,
    propose_candidates,
)
from matforge.engine.materials.structures import fingerprint, vegard_volume

ELEMENTS = ["Cu", "Ag", "Au", "Ni", "Pd", "Pt"]


def test_decorations_respect_the_settings():
    gen = DecorationGenerator(ELEMENTS, lattices=["fcc", "bcc"], max_atoms=8, max_species=2)
    pool = propose_candidates(100, np.random.default_rng(0), gen)
    assert len(pool) == 100
    assert len({c.fingerprint for c in pool}) == 100
    for c in pool:
        symbols = {el.symbol for el in c.structure.composition}
        assert symbols <= set(ELEMENTS)
        assert 2 <= len(symbols) <= 2
        assert 2 <= len(c.structure) <= 8
        assert c.generator in ("decoration:fcc", "decoration:bcc")
        assert c.structure.volume == __import__("pytest").approx(vegard_volume(c.structure))


def test_same_seed_same_pool():
    gen = DecorationGenerator(ELEMENTS)
    a = propose_candidates(30, np.random.default_rng(7), gen)
    b = propose_candidates(30, np.random.default_rng(7), gen)
    assert [c.fingerprint for c in a] == [c.fingerprint for c in b]


def test_excluded_fingerprints_are_never_proposed():
    gen = DecorationGenerator(["Cu", "Au"], lattices=["fcc"], max_atoms=4)
    first = propose_candidates(500, np.random.default_rng(0), gen)
    # a tiny space: the generator runs out instead of repeating itself
    assert 0 < len(first) < 500
    again = propose_candidates(
        10, np.random.default_rng(1), gen, exclude={c.fingerprint for c in first}
    )
    assert again == []


def test_mutations_come_from_parents():
    gen = DecorationGenerator(ELEMENTS, max_species=3)
    mut = MutationGenerator(ELEMENTS, max_species=3)
    rng = np.random.default_rng(0)
    parents = propose_candidates(3, rng, gen)
    pool = propose_candidates(40, rng, gen, mut, parents, mutation_fraction=0.5)
    mutants = [c for c in pool if c.generator.startswith("mutation")]
    assert len(mutants) == 20
    parent_fps = {p.fingerprint for p in parents}
    for m in mutants:
        assert m.parent in parent_fps
        assert m.fingerprint not in parent_fps
        assert len(m.structure.composition) <= 3


def test_fingerprint_sees_symmetry_equivalent_decorations_as_one():
    gen = DecorationGenerator(["Cu", "Au"], lattices=["fcc"], max_atoms=4)
    c = gen.sample(np.random.default_rng(2))
    s = c.structure.copy()
    s.translate_sites(range(len(s)), [0.5, 0.5, 0.0])
    assert fingerprint(s) == c.fingerprint
    assert Candidate(s * (1, 2, 1), "x").fingerprint == c.fingerprint


def test_an_exhausted_generator_stops_after_a_run_of_draws_that_give_nothing_new():
    """Mutants of one two-atom parent are few: asked for 100, the mutation generator gives
    what exists and stops after 10 * max_tries fruitless draws in a row, not
    after max_tries * 100 (a round's proposal took seconds on such a search)."""
    from pymatgen.core import Lattice, Structure

    from matforge.engine.materials.generate import draw_candidates

    parent_structure = Structure(Lattice.cubic(3.6), ["Cu", "Au"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    parent = Candidate(parent_structure, "seed")

    class Counting(MutationGenerator):
        draws = 0

        def propose(self, n, rng, parents=()):
            Counting.draws += n
            return super().propose(n, rng, parents)

    found = draw_candidates([(Counting(["Cu", "Au", "Ag"]), 100)], np.random.default_rng(0),
                            [parent], max_tries=20)
    assert 0 < len(found) < 10
    # each new mutant restarts the count of 200 misses; the cap, max_tries * quota, is 2,000
    assert Counting.draws <= (len(found) + 1) * 200 < 2_000


def test_a_mutation_drawn_again_is_not_built_and_fingerprinted_again(monkeypatch):
    import matforge.engine.materials.generate as generate

    parent = DecorationGenerator(["Cu", "Au"], max_atoms=4).sample(np.random.default_rng(1))
    mutator = MutationGenerator(["Cu", "Au", "Pt"])
    first = [mutator.mutate(parent, np.random.default_rng(7)) for _ in range(3)]
    calls = []
    monkeypatch.setattr(generate, "fingerprint",
                        lambda s: calls.append(1) or fingerprint(s))
    again = [mutator.mutate(parent, np.random.default_rng(7)) for _ in range(3)]
    assert calls == []  # taken from what was made before
    for a, b in zip(first, again):
        # the same mutant, with the fingerprint its structure has, as a copy of its own
        assert (a.fingerprint, a.generator, a.parent) == (b.fingerprint, b.generator, b.parent)
        assert a.structure == b.structure and a.structure is not b.structure
        assert b.fingerprint == fingerprint(b.structure)

"""File-based codes: a pure template (inputs from a structure, results from outputs) and a
per-machine profile (executable, MPI launcher and ranks, data directories, environment).

The split follows ASE's ``GenericFileIOCalculator``. The template is science: its
settings are the adapter's parameters and part of every evaluation's key. The
profile is the machine: it comes from the file named by ``MATFORGE_PROFILES``
(YAML, one mapping per adapter name) or the adapter's default, never from the
campaign file, so moving a campaign to another cluster does not make every
evaluation new. The code runs inside the evaluation's child process, so a
timeout kills it with its MPI ranks (they share the process group).
"""

from __future__ import annotations

import abc
import os
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pymatgen.core import Structure

from matforge.adapters.base import (
    EvaluationError,
    EvaluationResult,
    Evaluator,
    shared_references,
)


class Profile(BaseModel):
    """How one machine runs a code."""

    model_config = ConfigDict(extra="forbid", strict=True)

    command: list[str] = Field(min_length=1, description="the executable and its fixed flags")
    mpi: list[str] = Field(default_factory=list,
                           description="MPI launcher before the ranks, e.g. [mpirun, -np]")
    ranks: int = Field(1, ge=1)
    data_dir: str | None = Field(None, description="pseudopotentials or basis sets")
    env: dict[str, str] = Field(default_factory=lambda: {"OMP_NUM_THREADS": "1"})

    def argv(self, *arguments: str) -> list[str]:
        launcher = [*self.mpi, str(self.ranks)] if self.mpi else []
        return [*launcher, *self.command, *arguments]


def load_profile(adapter: str, default: Profile) -> Profile:
    """The profile of ``adapter`` on this machine: its entry in the ``MATFORGE_PROFILES``
    file over ``default``. Raises EvaluationError naming the file and the field."""
    from matforge.engine.settings import get_settings

    path = get_settings().profiles
    if path is None:
        return default
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise EvaluationError(f"profiles file {path}: {error}") from None
    entry = data.get(adapter) if isinstance(data, dict) else None
    if entry is None:
        return default
    try:
        return Profile.model_validate({**default.model_dump(), **entry})
    except (ValidationError, TypeError) as error:
        raise EvaluationError(f"profiles file {path}: entry {adapter!r}: {error}") from None


class FileIOEvaluator(Evaluator):
    """An adapter for a code that reads input files and writes output files.

    Subclasses implement :meth:`write_inputs` and :meth:`read_results` (the
    template, no process started) and :meth:`arguments`; ``default_profile`` is
    used where ``MATFORGE_PROFILES`` names none.
    """

    default_profile: ClassVar[Profile]
    output_file: ClassVar[str] = "output.txt"

    def profile(self) -> Profile:
        return load_profile(self.name, self.default_profile)

    @abc.abstractmethod
    def write_inputs(self, structure: Structure, workdir: Path, profile: Profile) -> None:
        """Write the input files for ``structure`` into ``workdir``."""

    @abc.abstractmethod
    def arguments(self) -> list[str]:
        """Arguments after the profile's command (e.g. ``["-in", "espresso.pwi"]``)."""

    @abc.abstractmethod
    def read_results(self, structure: Structure, workdir: Path) -> EvaluationResult:
        """The result, from the output files in ``workdir``."""

    def run(self, workdir: Path, profile: Profile) -> None:
        """Run the code in ``workdir``; its output goes to :attr:`output_file`."""
        argv = profile.argv(*self.arguments())
        env = {**os.environ, **profile.env}
        with open(workdir / self.output_file, "w") as out:
            try:
                code = subprocess.run(argv, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                      env=env, stdin=subprocess.DEVNULL).returncode
            except FileNotFoundError:
                raise EvaluationError(f"{argv[0]} not found (set the {self.name!r} profile in "
                                      "MATFORGE_PROFILES)") from None
        if code != 0 and not self.finished(workdir):
            tail = (workdir / self.output_file).read_text(errors="replace").strip()[-400:]
            raise EvaluationError(f"{' '.join(argv)} exited with code {code}: ...{tail}")

    def finished(self, workdir: Path) -> bool:
        """Whether the code ended its run normally even with a non-zero exit code (some
        codes exit with 2 after reporting a calculation that did not converge)."""
        return False

    def evaluate(self, structure: Structure, workdir: Path) -> EvaluationResult:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        profile = self.profile()
        self.write_inputs(structure, workdir, profile)
        self.run(workdir, profile)
        return self.read_results(structure, workdir)

    def describe_profile(self) -> dict[str, Any]:
        return self.profile().model_dump()

    def reference_energy(self, symbol: str, workdir: Path) -> float:
        """Energy per atom of element ``symbol``'s ground state with these settings,
        computed in ``workdir`` (for formation energies; see :meth:`references`)."""
        raise NotImplementedError(f"{type(self).__name__} computes no reference energies")

    def references(self, symbols: list[str], directory: Path) -> dict[str, float]:
        """Energies per atom of the elements' ground states with these settings, computed
        once per campaign directory (:func:`~matforge.adapters.base.shared_references`)."""
        return shared_references(
            directory, self.name, self.parameters(), symbols,
            lambda s: self.reference_energy(s, directory / f"{self.name}-references" / s))

"""One factory for the ASE calculators matforge evaluates with: :func:`make_calculator`.

A name picks a calculator: ``emt`` (ASE's effective-medium theory), ``chgnet``
(CHGNet 0.3.0, pretrained on MPtrj) or a pretrained SevenNet (``7net-0``,
``7net-l3i5``, ``7net-mf-0`` at its PBE fidelity). The machine-learned potentials
are imported only when asked for, so matforge runs without them; one that is not
installed raises :class:`EvaluationError` naming the pip extra that installs it.
Their weights ship inside their wheels: nothing is downloaded.

Torch models run on CUDA when ``torch.cuda.is_available()``, else on the CPU, on
the process's share of the cores (:func:`matforge.engine.settings.limit_threads`,
applied once per process unless something has already applied it). A loaded model
is kept per process and shared by the calculators made from it; each call returns
a new calculator, so two relaxations never share one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from ase.calculators.calculator import Calculator
from ase.data import chemical_symbols

from matforge.adapters.base import EvaluationError


def _elements(numbers) -> frozenset[str]:
    return frozenset(chemical_symbols[z] for z in numbers)


@dataclass(frozen=True)
class CalculatorSpec:
    """How to build one named calculator.

    Parameters
    ----------
    build : builds a calculator on a device (``"cpu"``, ``"cuda"``, ``"cuda:1"``)
    package : the module that must be importable for it
    extra : the matforge pip extra that installs ``package`` (None: always installed)
    elements : the elements it has parameters for (None: any)
    torch : whether it computes with torch (threads and device apply)
    """

    build: Callable[[str], Calculator]
    package: str
    extra: str | None
    elements: frozenset[str] | None
    torch: bool


def _emt(device: str) -> Calculator:
    from ase.calculators.emt import EMT

    return EMT()


@lru_cache(maxsize=None)
def _chgnet_model(device: str):
    from chgnet.model import CHGNet

    return CHGNet.load(model_name="0.3.0", use_device=device, verbose=False)


def _chgnet(device: str) -> Calculator:
    from chgnet.model import CHGNetCalculator

    with contextlib.redirect_stdout(io.StringIO()):  # it prints its device on every call
        return CHGNetCalculator(model=_chgnet_model(device), use_device=device,
                                on_isolated_atoms="ignore")


SEVENNET_MODALS = {"7net-mf-0": "PBE"}
"""The fidelity used for multi-fidelity SevenNets: PBE(+U), as MPtrj and CHGNet."""


@lru_cache(maxsize=None)
def _sevennet_reference(name: str, device: str) -> Calculator:
    from sevenn.calculator import SevenNetCalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no tensor-product accelerator" on every CPU
        return SevenNetCalculator(name, device=device, modal=SEVENNET_MODALS.get(name))


def _sevennet(name: str) -> Callable[[str], Calculator]:
    def build(device: str) -> Calculator:
        from sevenn.calculator import SevenNetCalculator

        loaded = _sevennet_reference(name, device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return SevenNetCalculator(loaded.model, file_type="model_instance",
                                      device=device, modal=loaded.modal)
    return build


_SEVENNET_ELEMENTS = _elements(z for z in range(1, 95) if not 84 <= z <= 88)

CALCULATORS: dict[str, CalculatorSpec] = {
    "emt": CalculatorSpec(_emt, "ase", None, frozenset(
        {"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt", "H", "C", "N", "O"}), torch=False),
    "chgnet": CalculatorSpec(_chgnet, "chgnet", "chgnet", _elements(range(1, 95)), torch=True),
    "7net-0": CalculatorSpec(_sevennet("7net-0"), "sevenn", "sevennet", _SEVENNET_ELEMENTS,
                             torch=True),
    "7net-l3i5": CalculatorSpec(_sevennet("7net-l3i5"), "sevenn", "sevennet",
                                _SEVENNET_ELEMENTS, torch=True),
    "7net-mf-0": CalculatorSpec(_sevennet("7net-mf-0"), "sevenn", "sevennet",
                                _SEVENNET_ELEMENTS, torch=True),
}
"""The calculators :func:`make_calculator` knows, by name."""


def calculator_names() -> list[str]:
    """The names :func:`make_calculator` accepts."""
    return sorted(CALCULATORS)


def calculator_spec(name: str) -> CalculatorSpec:
    """The :class:`CalculatorSpec` of ``name``; EvaluationError listing the known names."""
    try:
        return CALCULATORS[name]
    except (KeyError, TypeError):
        raise EvaluationError(f"unknown calculator {name!r} (known: "
                              f"{', '.join(calculator_names())})") from None


def is_installed(name: str) -> bool:
    """Whether the package behind calculator ``name`` can be imported here."""
    return importlib.util.find_spec(calculator_spec(name).package) is not None


def default_device() -> str:
    """``"cuda"`` where torch sees a CUDA device, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_device(device: str) -> str:
    import torch

    kind, _, index = device.partition(":") if isinstance(device, str) else ("", "", "")
    if kind not in ("cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise EvaluationError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index or 0) >= count:
            raise EvaluationError(f"device {device!r}: torch sees {count} CUDA device(s)")
    return device


def _limit_torch_threads() -> None:
    """Give torch the process's share of the cores, unless that was done already."""
    from matforge.engine import settings

    if settings._thread_limit is None:
        settings.limit_threads()


def make_calculator(name: str, device: str | None = None) -> Calculator:
    """A new ASE calculator of kind ``name``.

    Parameters
    ----------
    name : one of :func:`calculator_names` (``"emt"``, ``"chgnet"``, ``"7net-0"``, ...)
    device : ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` for torch models; None: CUDA when
        available, else the CPU. EMT ignores it.

    Raises
    ------
    EvaluationError
        For an unknown name (listing the known ones), a model whose package is not
        installed (naming the pip extra), or a device torch does not have.
    """
    spec = calculator_spec(name)
    if not is_installed(name):
        raise EvaluationError(f"calculator {name!r} needs the {spec.package!r} package, which "
                              f"is not installed: pip install 'matforge[{spec.extra}]'")
    if not spec.torch:
        return spec.build("cpu")
    device = _check_device(device) if device is not None else default_device()
    _limit_torch_threads()
    try:
        return spec.build(device)
    except ImportError as error:
        raise EvaluationError(f"calculator {name!r}: importing {spec.package!r} failed "
                              f"({error}); reinstall it: pip install "
                              f"'matforge[{spec.extra}]'") from error

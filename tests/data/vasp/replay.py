"""A stand-in for ``vasp_std`` that replays recorded VASP outputs, as atomate2's
``utils/testing/vasp.py`` does: it checks the INCAR, KPOINTS, POSCAR and POTCAR in the
directory it runs in against a plan, then copies the recorded outputs of the matching case in.

Usage: ``python replay.py PLAN.json`` in the calculation's directory. The plan is a JSON list
of cases, each a mapping:

- ``name``: a label, appended with the directory to ``PLAN.json.log`` on every run;
- ``poscar``: ``{"species": [...], "lattice": 3x3, "cart": n x 3}`` in Å, in POSCAR order;
  a case applies to a POSCAR that holds this structure (positions compared modulo the cell)
- ``when`` (optional): ``{TAG: value}`` the INCAR must also have for the case to apply;
- ``incar``: ``{TAG: value}`` the INCAR must have; ``absent``: tags it must not have;
- ``kpoints``: ``{"style": "Gamma", "mesh": [n1, n2, n3]}``;
- ``potcar``: the POTCAR's TITEL lines, in order (they must follow the POSCAR's species);
- ``outputs``: a folder of recorded outputs, each file copied in (``.gz`` unpacked);
- ``exit`` (optional): the exit code to end with, 0 by default.

A run that matches no case, or breaks an expectation, prints why (the reason last, so
it is in the tail an error message quotes) and exits with 3 without writing any output.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np

# plain parsers, not pymatgen's: this runs once per replayed calculation and must start fast


def _value(text: str):
    text = text.strip()
    if text.upper() in (".TRUE.", "T", "TRUE"):
        return True
    if text.upper() in (".FALSE.", "F", "FALSE"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_incar(path: Path) -> dict:
    tags = {}
    for line in path.read_text().splitlines():
        line = re.split(r"[#!]", line, maxsplit=1)[0]
        if "=" in line:
            key, value = line.split("=", 1)
            tags[key.strip().upper()] = _value(value)
    return tags


def read_kpoints(path: Path) -> tuple[str, list[int]]:
    lines = path.read_text().splitlines()
    style = {"g": "Gamma", "m": "Monkhorst-Pack"}.get(lines[2].strip()[:1].lower(), lines[2])
    return style, [int(n) for n in lines[3].split()[:3]]


def read_poscar(path: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Species per atom, the cell (Å) and the Cartesian positions (Å) of a VASP 5 POSCAR."""
    lines = path.read_text().splitlines()
    scale = float(lines[1].split()[0])
    cell = scale * np.array([[float(x) for x in lines[i].split()[:3]] for i in (2, 3, 4)])
    names, counts = lines[5].split(), [int(n) for n in lines[6].split()]
    row = 7 + (lines[7].strip()[:1].lower() == "s")
    cartesian = lines[row].strip()[:1].lower() in ("c", "k")
    n = sum(counts)
    xyz = np.array([[float(x) for x in line.split()[:3]] for line in lines[row + 1:row + 1 + n]])
    positions = scale * xyz if cartesian else xyz @ cell
    return [e for e, c in zip(names, counts) for _ in range(c)], cell, positions


def _same(a, b) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().lower() == b.strip().lower()
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    try:
        return bool(np.isclose(float(a), float(b), rtol=1e-9, atol=1e-12))
    except (TypeError, ValueError):
        return False


def _holds(poscar, expected: dict) -> bool:
    species, cell, positions = poscar
    lattice = np.asarray(expected["lattice"], dtype=float)
    if species != expected["species"] or not np.allclose(cell, lattice, atol=1e-6):
        return False
    delta = np.linalg.solve(lattice.T, (positions - np.asarray(expected["cart"])).T).T
    delta -= np.round(delta)
    return bool(np.abs(delta @ lattice).max() < 1e-5)


def _problems(case: dict, incar: dict, kpoints: tuple[str, list[int]], titles: list[str],
              poscar) -> list[str]:
    problems = []
    for tag, value in case.get("incar", {}).items():
        if tag not in incar:
            problems.append(f"INCAR has no {tag} (expected {value!r})")
        elif not _same(incar[tag], value):
            problems.append(f"INCAR {tag} = {incar[tag]!r}, expected {value!r}")
    problems += [f"INCAR has {tag} = {incar[tag]!r}, expected none"
                 for tag in case.get("absent", []) if tag in incar]
    expected = case.get("kpoints")
    if expected:
        style, mesh = kpoints
        if style != expected["style"]:
            problems.append(f"KPOINTS style {style}, expected {expected['style']}")
        if mesh != list(expected["mesh"]):
            problems.append(f"KPOINTS mesh {mesh}, expected {expected['mesh']}")
    if titles != case["potcar"]:
        problems.append(f"POTCAR holds {titles}, expected {case['potcar']}")
    species = [t.split()[1].split("_")[0] for t in titles]
    in_poscar = list(dict.fromkeys(poscar[0]))
    if species != in_poscar:
        problems.append(f"POTCAR order {species} differs from the POSCAR's {in_poscar}")
    return problems


def main(plan_path: str) -> int:
    plan = json.loads(Path(plan_path).read_text())
    here = Path.cwd()
    incar = read_incar(here / "INCAR")
    kpoints = read_kpoints(here / "KPOINTS")
    poscar = read_poscar(here / "POSCAR")
    titles = re.findall(r"TITEL\s*=\s*(.+?)\s*$", (here / "POTCAR").read_text(), re.MULTILINE)
    for case in plan:
        when = case.get("when", {})
        if not _holds(poscar, case["poscar"]) or not all(
                tag in incar and _same(incar[tag], value) for tag, value in when.items()):
            continue
        problems = _problems(case, incar, kpoints, titles, poscar)
        if problems:
            print(*problems, sep="\n")
            print(f"replay: the inputs break the plan of case {case['name']!r}")
            return 3
        with open(f"{plan_path}.log", "a") as log:
            log.write(f"{case['name']}\t{here}\n")
        source = Path(plan_path).parent / case["outputs"]  # an absolute one stays itself
        for path in sorted(source.iterdir()):
            if path.suffix == ".gz":
                with gzip.open(path, "rb") as packed, open(here / path.stem, "wb") as out:
                    shutil.copyfileobj(packed, out)
            else:
                shutil.copy(path, here / path.name)
        print(f"replayed {case['name']} from {source}")
        return int(case.get("exit", 0))
    print(*poscar, incar, sep="\n")
    print(f"replay: no case of {plan_path} holds this POSCAR with this INCAR")
    return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

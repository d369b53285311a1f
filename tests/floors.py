"""Print the lowest version pyproject.toml admits for each dependency, as `name==floor` lines.

`make floors` installs these (torch apart: the one on this disk, see the Makefile) into
.venv-floors and runs a fast part of the suite there, so every `>=` in pyproject.toml is one the
code was run on. A dependency without a `>=` floor is an error: it would install its newest.

    python tests/floors.py [--extra serve] [--skip torch]
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(,.*)?$")


def floors(extras: list[str] = (), skip: list[str] = ()) -> list[str]:
    """`name==floor` for [project].dependencies plus the named optional groups, minus `skip`."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    pins = []
    for spec in specs:
        spec = spec.split(";")[0]
        match = FLOOR.match(spec)
        if not match:
            raise SystemExit(f"pyproject.toml: {spec!r} has no `>=` floor; give it one")
        name, _, version, _ = match.groups()
        if name.lower() not in {s.lower() for s in skip}:
            pins.append(f"{name}=={version}")
    return pins


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", action="append", default=[], help="an optional-dependencies group too")
    parser.add_argument("--skip", action="append", default=[], help="a dependency to leave out")
    args = parser.parse_args()
    print("\n".join(floors(args.extra, args.skip)))
    sys.exit(0)

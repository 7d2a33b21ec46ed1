"""``python make_site.py MIRROR NAME...``: the mirror of this Python's site-packages used by ``sitecustomize.py``.

MIRROR gets one symbolic link per entry of the site folders on ``sys.path`` (first one wins, as imports do), except
the ``.pth`` files, the editable installs and every entry of the distributions NAME (module folders, single-file
modules, ``.dist-info``/``.egg-info``; names compared as pip does: case and ``-``/``_``/``.`` alike). Prints the
real site folders, joined with ``os.pathsep``, for ``BNINIT_REHEARSAL_REAL_SITES``.
"""

from __future__ import annotations

import os
import re
import site
import sys


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _dist_of(entry: str) -> str:
    """The (normalized) distribution or module an entry of site-packages belongs to."""
    base = entry
    for suffix in (".dist-info", ".egg-info", ".py", ".pth", ".egg-link"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    if entry.endswith((".dist-info", ".egg-info")):
        base = base.split("-")[0]
    if ".cpython-" in base or base.endswith((".so", ".abi3")):
        base = base.split(".")[0]
    return _norm(base)


def main(argv: list[str]) -> int:
    mirror, hidden = argv[0], {_norm(n) for n in argv[1:]}
    sites = [p for p in site.getsitepackages() + [site.getusersitepackages()] if os.path.isdir(p)]
    ordered = [p for p in sys.path if p in sites] + [p for p in sites if p not in sys.path]
    os.makedirs(mirror, exist_ok=True)
    taken = set(os.listdir(mirror))
    for folder in ordered:
        for entry in sorted(os.listdir(folder)):
            if entry in taken or entry.endswith(".pth") or entry.startswith("__editable__"):
                continue
            if entry == "__pycache__" or _dist_of(entry) in hidden:
                continue
            os.symlink(os.path.join(folder, entry), os.path.join(mirror, entry))
            taken.add(entry)
    print(os.pathsep.join(ordered))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

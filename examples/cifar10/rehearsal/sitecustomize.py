"""Makes a Python here look like the GPU machine's for the rehearsal of ``gpu_verdict.sh`` (``REHEARSAL=1``).

Active only when ``BNINIT_REHEARSAL_SITE`` names a folder made by ``make_site.py``: a mirror of this Python's
site-packages (symbolic links) without the packages the device does not have (wandb, jsonargparse and the other
carried packages, the installed lightning-bninit). Every process whose ``PYTHONPATH`` holds this folder -- the
script's own Pythons and the runs that ``bninit compare`` starts, which inherit the environment -- then

* searches the mirror instead of the real site-packages, so ``import wandb`` fails as on the device and
  ``importlib.metadata`` finds no wandb either (as if it were not installed: no import hook that raises);
* loses the editable install's import hook, so ``lightning_bninit`` comes from ``PYTHONPATH`` or not at all.

``site`` has already run the ``.pth`` files of the real site-packages when it imports this module; a mirror is a
plain path entry, so nothing in it is run. Another ``sitecustomize`` later on the path (Debian's, say) is run after.
"""

from __future__ import annotations

import os
import sys


def _apply(mirror: str) -> None:
    real = [p for p in os.environ.get("BNINIT_REHEARSAL_REAL_SITES", "").split(os.pathsep) if p]
    real_set = {os.path.realpath(p) for p in real}
    new_path: list[str] = []
    for entry in sys.path:
        if os.path.realpath(entry) in real_set:
            if mirror not in new_path:
                new_path.append(mirror)  # in place of the first real site folder
            continue
        new_path.append(entry)
    if mirror not in new_path:
        new_path.append(mirror)
    sys.path[:] = new_path
    sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")
                        and not getattr(f, "__module__", "").startswith("__editable__")]
    sys.path_importer_cache.clear()


def _chain() -> None:
    """Run the next ``sitecustomize`` on the path, if any (this one shadows it)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == here:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            with open(candidate) as fh:
                code = compile(fh.read(), candidate, "exec")
            exec(code, {"__name__": "sitecustomize", "__file__": candidate})
            return


_mirror = os.environ.get("BNINIT_REHEARSAL_SITE")
if _mirror:
    _apply(_mirror)
_chain()

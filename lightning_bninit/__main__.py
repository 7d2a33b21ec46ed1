"""``python -m lightning_bninit`` runs the ``bninit`` command (:mod:`lightning_bninit.experiments.command`)."""

import sys

from lightning_bninit.experiments.command import main

if __name__ == "__main__":
    sys.exit(main())

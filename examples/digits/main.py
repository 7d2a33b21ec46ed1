"""LightningCLI entry point of the digits example.

    python examples/digits/main.py fit --config examples/digits/base.yaml --bninit=true
    python examples/digits/main.py fit --config examples/digits/base.yaml --print_config
    bninit compare --config examples/digits/compare.yaml      # 5 seeds x 2 arms + report
"""

import os
import sys

# A model this small runs fastest on one thread; more threads mostly wait on each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # also when run with `python -m`

from digits import DigitsCNN, DigitsDataModule  # noqa: E402

from lightning_bninit.cli import BNInitCLI  # noqa: E402


def main() -> None:
    BNInitCLI(DigitsCNN, DigitsDataModule)


if __name__ == "__main__":
    main()

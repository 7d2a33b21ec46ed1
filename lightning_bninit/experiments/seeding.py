"""Seed handling for paired-seed experiments.

The paper trains every configuration with the seeds 1..15 and pairs the new method with the
baseline by seed. The official code does not hand these small integers to the random number
generators directly: it first hashes each one with MD5 and keeps the last 32 bits of the digest,
so that consecutive integers give well-mixed seeds (see D. Jones, *Good practice in (pseudo)
random number generation for bioinformatics applications*). :func:`derive_seed` reproduces that
mapping and ``bninit compare`` applies it by default (``derive_seed: false`` in the experiment
file passes the integers through unchanged).
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["derive_seed", "parse_seeds"]

_MAX_SEED = 2**32 - 1
_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")


def derive_seed(seed: int) -> int:
    """Map a small integer seed to a 32-bit seed the way the paper's official code does.

    The decimal string of ``seed`` is hashed with MD5 and the last 8 hex digits (the 32 least
    significant bits) of the digest are read as an unsigned integer.

    Args:
        seed: a non-negative integer, e.g. a run index ``1..15``.

    Returns:
        An integer in ``[0, 2**32 - 1]``, accepted by ``lightning.seed_everything``.

    Raises:
        TypeError: if ``seed`` is not an integer (``bool`` is rejected too).
        ValueError: if ``seed`` is negative.

    Example::

        >>> derive_seed(1)
        1869972635
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    digest = hashlib.md5(str(seed).encode("utf-8")).hexdigest()
    return int(digest[-8:], 16)


def parse_seeds(spec: str | int | list[int]) -> list[int]:
    """Parse a seed specification into a sorted list of unique non-negative integers.

    Accepted forms: ``"7"``, ``"1-15"`` (inclusive range), ``"1,3,5"``, a mix such as
    ``"1-5,10,12-13"``, an int, or a list of ints (as it may come from a YAML file).

    Args:
        spec: the specification.

    Returns:
        The seeds, ascending, without duplicates.

    Raises:
        ValueError: for an empty, malformed, descending or negative specification; the message
            names the offending part.

    Example::

        >>> parse_seeds("1-3,7")
        [1, 2, 3, 7]
    """
    if isinstance(spec, bool):
        raise ValueError(f"invalid seeds {spec!r}: expected e.g. '1-15', '1,3,5' or a list of ints")
    if isinstance(spec, int):
        parts: list[str] = [str(spec)]
    elif isinstance(spec, (list, tuple)):
        parts = []
        for item in spec:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise ValueError(f"invalid seed {item!r} in {spec!r}: expected integers")
            parts.append(str(item))
    elif isinstance(spec, str):
        parts = spec.split(",")
    else:
        raise ValueError(f"invalid seeds {spec!r}: expected e.g. '1-15', '1,3,5' or a list of ints")
    seeds: set[int] = set()
    for part in parts:
        part = part.strip()
        if not part:
            raise ValueError(f"invalid seeds {spec!r}: empty item; expected e.g. '1-15' or '1,3,5'")
        match = _RANGE.match(part)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if lo > hi:
                raise ValueError(f"invalid seed range {part!r}: start must be <= end")
            values = range(lo, hi + 1)
        elif re.fullmatch(r"-?\d+", part):
            values = range(int(part), int(part) + 1)
        else:
            raise ValueError(f"invalid seed {part!r} in {spec!r}: expected an integer or a range like '1-15'")
        for value in values:
            if value < 0 or value > _MAX_SEED:
                raise ValueError(f"invalid seed {value} in {spec!r}: seeds must be in [0, {_MAX_SEED}]")
            seeds.add(value)
    return sorted(seeds)

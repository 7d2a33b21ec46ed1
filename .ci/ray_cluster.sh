#!/usr/bin/env bash
# CI leg: `launcher: ray` on a real two-node Ray cluster (tests/test_ray_cluster.py). Needs root (CI runs as root):
# the test makes a network namespace with only the loopback interface and starts every Ray node inside it, so that
# no Ray process binds an outside interface or sends anything off the machine. With CI=true the test fails instead of
# skipping when something it needs is missing; any pytest exit code but 0 fails the leg (5: no test ran).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
rc=0
CI=true timeout 1200 python -m pytest -q -rs -p no:cacheprovider tests/test_ray_cluster.py || rc=$?
echo "ray cluster leg: pytest exit code $rc after $((SECONDS - start)) s"
if [ "$rc" -ne 0 ]; then
    exit "$rc"
fi

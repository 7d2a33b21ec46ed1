#!/usr/bin/env bash
# CI leg: the lowest torch and Lightning that pyproject.toml declares, on the tests of the parts that use their
# internals (the step split, the callbacks, the monitor, compat). Run from the repository root.
set -euo pipefail
read -r TORCH LIGHTNING < <(python - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
low = {m.group(1): m.group(2) for d in deps if (m := re.fullmatch(r"(torch|lightning)>=([\d.]+)", d))}
pad = lambda v: v if v.count(".") >= 2 else v + ".0"  # exactly the bound: "2.13" -> "2.13.0"
print(pad(low["torch"]), pad(low["lightning"]))
PY
)
venv=$(mktemp -d)/venv
python -m venv "$venv"
"$venv/bin/pip" install -q "torch==$TORCH" "lightning==$LIGHTNING" "typing-extensions>=4.4" pytest pyyaml numpy matplotlib
"$venv/bin/python" -c "import torch, lightning; print('lowest versions: torch', torch.__version__, 'lightning', lightning.__version__)"
PYTHONPATH=$PWD "$venv/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider \
    tests/test_update_exactness.py tests/test_update_in_lightning.py tests/test_callback.py \
    tests/test_bn_monitor.py tests/test_update_split.py tests/test_compat.py

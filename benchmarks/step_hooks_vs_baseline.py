"""The step hooks' own Python work per step, this checkout against an earlier one, in one process, alternating.

CIFAR ResNet-18 (one param group of 62 parameters), SGD with momentum and weight decay, c = 100: the hooks around one
step without the optimizer's own update, with a closure (Lightning's automatic optimization) and without one (plain
loops, manual optimization, GradScaler). The earlier checkout's package comes from ``git archive``::

    git archive 4ca90fe lightning_bninit | tar -x -C /tmp/baseline
    python benchmarks/step_hooks_vs_baseline.py /tmp/baseline
"""
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from examples.cifar10.model import cifar_resnet18  # noqa: E402

def load(root):
    for k in [k for k in sys.modules if k.startswith("lightning_bninit")]:
        del sys.modules[k]
    sys.path.insert(0, root)
    mods = {n: importlib.import_module(f"lightning_bninit.method.{n}") for n in ("layers", "update", "step_hooks")}
    sys.path.remove(root)
    return mods

old = load(sys.argv[1]); new = load(str(ROOT))

def make(mods, closure):
    model = cifar_resnet18()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    L, U, S = mods["layers"], mods["update"], mods["step_hooks"]
    splitter = U.GroupSplitter(L.param_roles(L.find_bn_layers(model).values()), 100.0, True)
    is_old = "deferred" in S.RevisedUpdate.__init__.__code__.co_varnames
    upd = S.RevisedUpdate(splitter, deferred=closure) if is_old else S.RevisedUpdate(splitter)
    upd.attach(opt)
    noop = lambda: None
    def step():  # exactly what the hooks do around one step, without the optimizer's own work
        if is_old:  # old: Lightning armed the split in on_before_optimizer_step, inside the step
            upd._pre_step(opt, (opt,), {})
            if closure:
                upd.arm(opt)
        else:
            res = upd._pre_step(opt, (opt, noop) if closure else (opt,), {})
            if res is not None:
                res[0][1]()
        upd._post_step(opt, (), {})
    step()
    return step

def per_call(f, reps=3000):
    t = time.perf_counter()
    for _ in range(reps):
        f()
    return (time.perf_counter() - t) / reps

for closure in (False, True):
    fo, fn = make(old, closure), make(new, closure)
    o, n = [], []
    for r in range(15):
        o.append(per_call(fo)); n.append(per_call(fn))
    print(f"{'with closure (Lightning automatic)' if closure else 'no closure (plain loop, manual, GradScaler)'}: "
          f"old {statistics.median(o)*1e6:.1f} us, new {statistics.median(n)*1e6:.1f} us per step (median of 15x3000)")

"""``lightning_bninit.attach`` in a plain PyTorch loop: the same trajectory as the three-group optimizer, the user's
groups in place between steps, GradScaler skips, resume, several optimizers, errors; an optimizer that gains BN
parameters after attach, attach on groups built by ``bn_param_groups``, and LBFGS's refusal and its way out."""

from __future__ import annotations

import copy
import re
import warnings
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

from support.groups import GroupsInPlace
from support.helpers import (
    PlainSGD, assert_same_params, dataset, optimizer_cases, plain_loop, reference_fit, tiny_net,
)
from lightning_bninit import RELU_STD, attach, bn_param_groups, init_bn_
from lightning_bninit.method.input_norm import attach_input_norm

# C is a power of two, so the scales' lr is the same double whichever side divides by c: the step split's
# (lr * r) / c and the three groups' (lr / c) * r under a schedule (factor r) differ only in the exponent, which
# commutes with rounding (with c = 100 they can differ in the last bit, which Adam-type steps amplify). Both sides
# then do the same arithmetic and are compared for equality.
LR, WD, INIT, C = 0.05, 1e-2, 0.1, 128.0
STEPS, EPOCHS = 5, 2

OPTIMIZERS = optimizer_cases(LR, WD)
COSINE = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS * EPOCHS)  # noqa: E731
# The closed form reads base_lrs by position: groups left split after a step would not follow the schedule.
LAMBDA = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))  # noqa: E731
# For the tests on hand-built groups (at the end): both sides use these groups, c = 100 as attach's default.
SGD = partial(torch.optim.SGD, lr=LR, momentum=0.9, weight_decay=WD)
GROUPED = {"lr": LR, "weight_decay": WD, "scale_lr_divisor": 100.0}


U = 2.0**-53  # unit roundoff of float64


def assert_one_sgd_step(after: torch.Tensor, before: torch.Tensor, lr: float, grad: torch.Tensor) -> None:
    """``after`` is plain SGD's ``before - lr * grad``. The test's expression rounds the product, then the difference;
    torch's ``add_(grad, alpha=-lr)`` may fuse the multiply-add and round once. The exact values of the two then
    differ by the product's rounding, <= U |lr grad|, and rounding to nearest (monotone) adds at most one ulp of the
    result, <= 2 U |result|: that bound, elementwise."""
    expected = before - lr * grad
    bound = U * (lr * grad).abs() + 2 * U * expected.abs()
    assert torch.all((after - expected).abs() <= bound), (after - expected).abs().max()


def attach_fit(start: nn.Module, make_optimizer, make_scheduler, *, ds=None, **loop: Any) -> tuple[nn.Module, Any]:
    net = copy.deepcopy(start)
    optimizer = make_optimizer(net.parameters())
    handle = attach(net, optimizer, init_scale=INIT, scale_lr_divisor=C)
    scheduler = make_scheduler(optimizer) if make_scheduler else None
    check = GroupsInPlace(optimizer, scheduler)
    plain_loop(net, optimizer, scheduler, ds or dataset(), STEPS, EPOCHS, after_step=check, **loop)
    assert check.checks == STEPS * EPOCHS
    return net, handle


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_matches_three_group_optimizer(name: str) -> None:
    torch.manual_seed(0)
    start = tiny_net().double()
    trained, handle = attach_fit(start, OPTIMIZERS[name], COSINE)
    expected = reference_fit(start, dataset(), OPTIMIZERS[name], COSINE, STEPS, EPOCHS, init_scale=INIT,
                             divisor=C, lr=OPTIMIZERS[name].keywords["lr"], weight_decay=WD)
    assert_same_params(trained, expected)
    assert handle.layer_names == ["1", "4", "9"]


def test_closed_form_schedule_accumulation_and_clipping() -> None:
    torch.manual_seed(1)
    start = tiny_net().double()
    sgd = OPTIMIZERS["sgd_momentum"]
    trained, _ = attach_fit(start, sgd, LAMBDA, ds=dataset(80), accumulate=2, clip_norm=0.05)
    expected = reference_fit(start, dataset(80), sgd, LAMBDA, STEPS, EPOCHS, init_scale=INIT, divisor=C, lr=LR,
                             weight_decay=WD, accumulate=2, clip_norm=0.05)
    assert_same_params(trained, expected)


def test_gradscaler_skipped_steps_leave_nothing_behind() -> None:
    torch.manual_seed(2)
    start = tiny_net().double()
    skips = frozenset({1, 6})
    sgd = OPTIMIZERS["sgd_momentum"]
    runs = []
    for use_attach in (True, False):
        net = copy.deepcopy(start)
        if use_attach:
            optimizer = sgd(net.parameters())
            attach(net, optimizer, init_scale=INIT, scale_lr_divisor=C)
        else:
            init_bn_(net, INIT)
            optimizer = sgd([{k: v for k, v in g.items() if k != "bninit"}
                             for g in bn_param_groups(net, lr=LR, weight_decay=WD, scale_lr_divisor=C)])
        taken = []
        optimizer.register_step_post_hook(lambda *_: taken.append(1))
        scheduler = COSINE(optimizer)
        check = GroupsInPlace(optimizer, scheduler)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")  # the skipped first step
            plain_loop(net, optimizer, scheduler, dataset(), STEPS, EPOCHS, scaler=torch.amp.GradScaler("cpu"),
                       inf_at=skips, after_step=check)
        runs.append(net)
        assert len(taken) == STEPS * EPOCHS - len(skips)  # the scaler did skip those steps
    assert_same_params(*runs)


def test_resume_from_a_checkpoint_is_exact(tmp_path) -> None:
    torch.manual_seed(3)
    start = tiny_net().double()
    make = OPTIMIZERS["adamw"]

    def pretrained(net: nn.Module) -> nn.Module:
        with torch.no_grad():  # a pretrained-looking layer: kept as it is, its values are the initial ones
            net[4].weight.uniform_(0.5, 1.5)
        return net

    pretrained(start)

    def build(net: nn.Module) -> tuple[Any, Any, Any]:
        optimizer = make(net.parameters())
        with pytest.warns(UserWarning, match=r"attach left the values of 1 BN layer\(s\) alone.*attach\(model, "):
            handle = attach(net, optimizer, init_scale=INIT, scale_lr_divisor=C)
        return optimizer, COSINE(optimizer), handle

    full = copy.deepcopy(start)
    opt, sched, _ = build(full)
    plain_loop(full, opt, sched, dataset(), STEPS, EPOCHS)

    first = copy.deepcopy(start)
    opt, sched, handle = build(first)
    plain_loop(first, opt, sched, dataset(), STEPS, 1)
    torch.save({"model": first.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                "bninit": handle.state_dict()}, tmp_path / "ckpt.pt")
    initial = {k: v["scale"].clone() for k, v in handle.initial_values.items()}

    resumed = pretrained(tiny_net().double())  # other random values everywhere, the pretrained-looking layer too
    opt, sched, handle = build(resumed)
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    handle.load_state_dict(state["bninit"])
    plain_loop(resumed, opt, sched, dataset(), STEPS, 1)
    assert_same_params(resumed, full, rtol=0, atol=0)
    for name, scale in initial.items():
        assert torch.equal(handle.initial_values[name]["scale"], scale)
    assert state["bninit"]["settings"]["scale_lr_divisor"] == C


def test_input_norm_matches_three_groups_and_joins_the_first_group() -> None:
    torch.manual_seed(4)
    start = tiny_net().double()
    net = copy.deepcopy(start)
    optimizer = OPTIMIZERS["sgd_momentum"](net.named_parameters())
    n_params = len(optimizer.param_groups[0]["params"])
    handle = attach(net, optimizer, input_norm=True, scale_lr_divisor=C)
    group = optimizer.param_groups[0]
    assert len(optimizer.param_groups) == 1 and len(group["params"]) == n_params + 1
    assert group["params"][-1] is net.bninit_input_norm.weight
    assert group["param_names"][-1] == "bninit_input_norm.weight"
    assert handle.layer_names == ["bninit_input_norm", "1", "4", "9"]
    plain_loop(net, optimizer, None, dataset(), STEPS, 1)

    reference = copy.deepcopy(start)
    attach_input_norm(reference, 3, INIT)
    init_bn_(reference, INIT, exclude="bninit_input_norm")
    groups = [{k: v for k, v in g.items() if k != "bninit"}
              for g in bn_param_groups(reference, lr=LR, weight_decay=WD, scale_lr_divisor=C)]
    ref_opt = OPTIMIZERS["sgd_momentum"](groups)
    plain_loop(reference, ref_opt, None, dataset(), STEPS, 1)
    assert_same_params(net, reference)
    assert torch.all(net.bninit_input_norm.bias == 0) and not torch.allclose(
        net.bninit_input_norm.weight, torch.full((3,), INIT * RELU_STD, dtype=torch.float64))


def test_several_optimizers() -> None:
    torch.manual_seed(5)
    start = tiny_net().double()
    runs = []
    for use_attach in (True, False):
        net = copy.deepcopy(start)
        body, head = net[:8], net[8:]
        if use_attach:
            opts = [torch.optim.SGD(body.parameters(), lr=LR, momentum=0.9, weight_decay=WD),
                    torch.optim.Adam(head.parameters(), lr=LR)]
            handle = attach(net, opts)
            assert handle.optimizers == opts
        else:
            init_bn_(net, INIT)
            strip = lambda gs: [{k: v for k, v in g.items() if k != "bninit"} for g in gs]  # noqa: E731
            opts = [torch.optim.SGD(strip(bn_param_groups(body, lr=LR, weight_decay=WD)), lr=LR, momentum=0.9),
                    torch.optim.Adam(strip(bn_param_groups(head, lr=LR)), lr=LR)]
        for x, y in torch.utils.data.DataLoader(dataset(), batch_size=8):
            nn.functional.cross_entropy(net(x), y).backward()
            for opt in opts:
                opt.step()
                opt.zero_grad()
        runs.append(net)
    assert_same_params(*runs)


def test_remove_detaches_and_a_second_attach_is_refused() -> None:
    net = tiny_net().double()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    handle = attach(net, optimizer)
    with pytest.raises(ValueError, match="already attached.*twice"):
        attach(net, optimizer)
    handle.remove()
    # Detached: one plain SGD step moves the BN scales by the full lr times their gradient.
    x, y = dataset().tensors
    nn.functional.cross_entropy(net(x[:8]), y[:8]).backward()
    before, grad = net[1].weight.detach().clone(), net[1].weight.grad.clone()
    optimizer.step()
    assert_one_sgd_step(net[1].weight, before, LR, grad)
    with pytest.warns(UserWarning, match="left the values of 3 BN layer"):  # they moved: kept as they are
        attach(net, optimizer)  # allowed again after remove()


def test_attach_and_bninit_on_one_optimizer_are_refused() -> None:
    from lightning_bninit.method.settings import MethodSettings
    from lightning_bninit.method.application import BNINIT, apply_method

    net = tiny_net()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    attach(net, optimizer)
    treatment = apply_method(net, MethodSettings(), BNINIT, warnings.warn)  # what BNInit builds at setup
    with pytest.raises(ValueError, match="already attached"):
        treatment.attach(optimizer, BNINIT)


def test_third_party_optimizer_refused_unless_declared_separable_then_exact() -> None:
    torch.manual_seed(6)
    start = tiny_net().double()
    net = copy.deepcopy(start)
    optimizer = PlainSGD(net.parameters(), lr=LR, weight_decay=WD)
    with pytest.raises(TypeError, match=r"attach cannot .*PlainSGD.*bn_param_groups\(model.*"
                                        r"attach\(model, optimizer, separable_optimizers=\[PlainSGD\]\)"):
        attach(net, optimizer)
    assert torch.equal(net[1].weight, start[1].weight)  # refused before anything changed
    attach(net, optimizer, scale_lr_divisor=C, separable_optimizers=[PlainSGD])
    plain_loop(net, optimizer, None, dataset(), STEPS, EPOCHS)
    expected = reference_fit(start, dataset(), partial(PlainSGD, lr=LR, weight_decay=WD), None, STEPS, EPOCHS,
                             init_scale=INIT, divisor=C, lr=LR, weight_decay=WD)
    assert_same_params(net, expected)
    other = tiny_net()
    with pytest.raises(TypeError, match="LBFGS"):
        attach(other, torch.optim.LBFGS(other.parameters()))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"init_scale": 0}, "init_scale must be a finite number > 0"),
    ({"scale_lr_divisor": 0.5}, "scale_lr_divisor must be a finite number >= 1"),
    ({"include": 3}, "include must be"),
    ({"input_norm": 2}, "input_norm must be True, False"),
    ({"separable_optimizers": [torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1)]},
     "separable_optimizers must hold torch.optim.Optimizer subclasses"),
])
def test_bad_settings_are_named(kwargs: dict, message: str) -> None:
    net = tiny_net()
    before = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match=re.escape(message)):
        attach(net, torch.optim.SGD(net.parameters(), lr=LR), **kwargs)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_not_an_optimizer_and_input_norm_without_its_module_in_an_optimizer() -> None:
    net = tiny_net()
    with pytest.raises(TypeError, match="attach expects a torch.optim.Optimizer.*got str"):
        attach(net, "sgd")
    with pytest.raises(ValueError, match="no optimizer given to attach holds a parameter of it"):
        attach(net, torch.optim.SGD(net[9:].parameters(), lr=LR), input_norm="0")
    assert not hasattr(net[0], "bninit_input_norm")  # refused before the layer was added
    with pytest.warns(UserWarning, match=r"none of the 1 optimizer\(s\) given holds a parameter of the 3 BN"):
        optimizer = torch.optim.SGD(net[0].parameters(), lr=LR)
        handle = attach(net, optimizer)
    assert handle.optimizers == [optimizer]  # hooked all the same: BN parameters may join it later


def test_lazy_bn_is_set_on_its_first_forward_and_gets_the_update() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).double()
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    handle = attach(net, optimizer, init_scale=0.3, scale_lr_divisor=C)
    assert handle.layer_names == ["1"] and handle.initial_values == {}
    x, y = dataset().tensors
    nn.functional.cross_entropy(net(x[:8]), y[:8]).backward()
    assert torch.all(net[1].weight == 0.3) and torch.all(handle.initial_values["1"]["scale"] == 0.3)
    grad = net[1].weight.grad.clone()
    optimizer.step()
    assert_one_sgd_step(net[1].weight, torch.full_like(grad, 0.3), LR / C, grad)


def test_lazy_bn_loaded_from_a_checkpoint_keeps_the_loaded_values() -> None:
    """init_bn_ sets a lazy layer on its first forward, unless values were loaded into it before that forward."""
    trained = nn.BatchNorm2d(4)
    with torch.no_grad():
        trained.weight.uniform_(0.5, 1.5)
    lazy = nn.LazyBatchNorm2d()
    init_bn_(lazy, 0.1)
    lazy.load_state_dict(trained.state_dict())
    lazy(torch.randn(2, 4, 3, 3))
    assert torch.equal(lazy.weight, trained.weight)


def test_input_norm_of_a_float64_model_starts_at_the_float64_scale() -> None:
    # The scale is filled in the model's dtype, not filled in float32 and cast: float32(γ₀ · 0.58) differs from
    # γ₀ · 0.58 in float64 (0.058 has no exact binary form), so the comparison is for equality.
    net = tiny_net().double()
    norm = attach_input_norm(net, 3, INIT)
    expected = torch.full((3,), INIT * RELU_STD, dtype=torch.float64)
    assert torch.float32 != torch.float64 and not torch.equal(expected.float().double(), expected)
    assert torch.equal(norm.weight, expected) and norm.running_var.dtype == torch.float64
    assert torch.equal(norm.bias, torch.zeros(3, dtype=torch.float64)) and not norm.bias.requires_grad


def test_input_norm_channels_from_the_first_conv_or_the_setting() -> None:
    net = tiny_net()
    attach(net, torch.optim.SGD(net.parameters(), lr=LR), input_norm=True)
    assert net.bninit_input_norm.num_features == 3  # the first conv's in_channels
    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match=r"cannot tell how many channels .*attach\(model, optimizer, input_channels"):
        attach(pooled, torch.optim.SGD(pooled.parameters(), lr=LR), input_norm=True)
    attach(pooled, torch.optim.SGD(pooled.parameters(), lr=LR), input_norm=True, input_channels=3)
    assert pooled.bninit_input_norm.num_features == 3


# --- optimizers that change after attach, hand-built groups, LBFGS --------------------------------------------

def test_an_optimizer_that_cannot_split_is_refused_when_bn_parameters_join_it() -> None:
    from support.helpers import PlainSGD

    net = tiny_net()
    optimizer = PlainSGD(net[11].parameters(), lr=LR, weight_decay=WD)  # no BN parameter yet: accepted
    attach(net, optimizer)
    optimizer.add_param_group({"params": list(net[9].parameters())})
    with pytest.raises(TypeError, match=r"attach cannot .*PlainSGD"):
        optimizer.step()


def test_attach_input_norm_on_bn_param_groups() -> None:
    torch.manual_seed(6)
    start = tiny_net().double()
    net = copy.deepcopy(start)
    init_bn_(net, INIT)
    optimizer = SGD(bn_param_groups(net, **GROUPED))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*holds a parameter.*")
        attach(net, optimizer, input_norm=True)
    scale_group = next(g for g in optimizer.param_groups if g["bninit"] == "scale")
    assert scale_group["params"][-1] is net.bninit_input_norm.weight
    plain_loop(net, optimizer, None, dataset(), 3, 2)

    ref = copy.deepcopy(start)
    attach_input_norm(ref, 3, INIT)
    init_bn_(ref, INIT, exclude="bninit_input_norm")
    ref_opt = SGD([{k: v for k, v in g.items() if k != "bninit"} for g in bn_param_groups(ref, **GROUPED)])
    plain_loop(ref, ref_opt, None, dataset(), 3, 2)
    assert_same_params(net, ref)


def test_lbfgs_refusal_offers_only_what_works() -> None:
    net = tiny_net()
    with pytest.raises(TypeError, match="LBFGS") as refused:
        attach(net, torch.optim.LBFGS(net.parameters()))
    message = str(refused.value)
    assert "bn_param_groups" not in message and "separable_optimizers" not in message
    assert "scale_lr_divisor=1" in message
    with pytest.raises(ValueError, match=r"separable_optimizers.*LBFGS"):
        attach(net, torch.optim.LBFGS(net.parameters()), separable_optimizers=[torch.optim.LBFGS])
    # The way out it names does work: c = 1 (LBFGS has no weight decay to remove) needs no split.
    optimizer = torch.optim.LBFGS(net.parameters(), lr=0.1)
    attach(net, optimizer, scale_lr_divisor=1.0)
    x, y = dataset(dtype=torch.float32).tensors

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x[:8]), y[:8])
        loss.backward()
        return loss

    optimizer.step(closure)
    assert len(optimizer.param_groups) == 1

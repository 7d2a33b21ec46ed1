"""BNInit's setup, settings, errors, input BN and checkpoints."""

from __future__ import annotations

import copy
import math
import re
import warnings
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn

from support.helpers import PlainSGD, Classifier, assert_same_params, dataset, loader, reference_fit, tiny_net, trainer
from lightning_bninit import RELU_STD, BNInit, BNMonitor, InputNorm, attach, bn_param_groups, init_bn_

SGD = partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-2)


def fit(model: nn.Module, callback: BNInit, callbacks_extra: tuple = (), dtype: torch.dtype = torch.float32,
        **kwargs) -> None:
    kwargs.setdefault("max_epochs", 1)
    kwargs.setdefault("limit_train_batches", 2)
    trainer(callbacks=[callback, *callbacks_extra], **kwargs).fit(model, loader(dataset(dtype=dtype)))


def bn_layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, -0.1, math.nan, math.inf, -math.inf, "0.1", True, None])
def test_rejects_bad_init_scale(value) -> None:
    with pytest.raises(ValueError, match=rf"init_scale must be .*{re.escape(repr(value))}"):
        BNInit(init_scale=value)


@pytest.mark.parametrize("value", [0.5, 0, -1, math.nan, math.inf, "100"])
def test_rejects_bad_scale_lr_divisor(value) -> None:
    with pytest.raises(ValueError, match=rf"scale_lr_divisor must be .*{re.escape(repr(value))}"):
        BNInit(scale_lr_divisor=value)


@pytest.mark.parametrize("arg", ["include", "exclude"])
@pytest.mark.parametrize("value", [3, [re.compile("a"), 1.5], {"a": 1}])
def test_rejects_unknown_pattern_types(arg: str, value) -> None:
    with pytest.raises(ValueError, match=rf"{arg} (patterns )?must be"):
        BNInit(**{arg: value})


def test_rejects_bad_input_norm_arguments() -> None:
    with pytest.raises(ValueError, match="input_norm must be True, False or the qualified name"):
        BNInit(input_norm=3)
    with pytest.raises(ValueError, match="input_channels must be a positive int"):
        BNInit(input_norm=True, input_channels=0)


def test_accepts_boundary_values() -> None:
    callback = BNInit(init_scale=1e-6, scale_lr_divisor=1)
    assert (callback.method_settings.init_scale, callback.method_settings.scale_lr_divisor) == (1e-6, 1.0)


# --- setup -------------------------------------------------------------------------------------------------------

def test_setup_initializes_every_kind_of_bn() -> None:
    class MyBN(nn.BatchNorm2d):
        pass

    net = nn.Sequential(
        nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.BatchNorm3d(3), nn.SyncBatchNorm(3), MyBN(3),
        nn.BatchNorm2d(3, affine=False), nn.GroupNorm(1, 3), nn.LayerNorm(3), nn.InstanceNorm2d(3, affine=True),
    )
    report = init_bn_(net, 0.25)
    assert report.initialized == ["0", "1", "2", "3", "4"]
    for bn in net[:5]:
        assert torch.all(bn.weight == 0.25) and torch.all(bn.bias == 0)
    assert torch.all(net[6].weight == 1) and torch.all(net[8].weight == 1)  # other norms untouched


def test_include_and_exclude_select_layers() -> None:
    net = tiny_net()
    report = init_bn_(net, 0.5, include=["1", re.compile(r"\d")], exclude="9")
    assert report.initialized == ["1", "4"]
    assert torch.all(net[9].weight == 1)


def test_pretrained_layers_are_left_alone_with_one_warning() -> None:
    net = tiny_net()
    with torch.no_grad():
        net[1].weight.fill_(0.7)
        net[4].bias.fill_(0.2)
    model = Classifier(net, SGD)
    with pytest.warns(UserWarning, match=r"left the values of 2 BN layer\(s\) alone .*net\.1, net\.4.*force=True"):
        fit(model, BNInit(), limit_train_batches=0)
    assert torch.all(net[1].weight == 0.7) and torch.all(net[9].weight == 0.1)

    forced = tiny_net()
    with torch.no_grad():
        forced[1].weight.fill_(0.7)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*left the values.*")
        fit(Classifier(forced, SGD), BNInit(force=True), limit_train_batches=0)
    assert torch.all(forced[1].weight == 0.1)


def test_frozen_layers_are_treated_by_their_values() -> None:
    # A frozen layer may be unfrozen later (BaseFinetuning): at PyTorch's default it is initialized like any other.
    net = tiny_net()
    net[1].requires_grad_(False)
    callback = BNInit()
    fit(Classifier(net, SGD), callback)
    assert torch.all(net[1].weight == 0.1)
    assert "net.1" in callback.layer_names and "net.4" in callback.layer_names


def test_lazy_bn_is_initialized_once_materialized() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
    net(torch.zeros(2, 3, 6, 6))  # lazy linear must exist before the optimizer; the BN stays lazy on purpose
    net[1] = nn.LazyBatchNorm2d()
    callback = BNInit(init_scale=0.3)
    fit(Classifier(net, partial(torch.optim.SGD, lr=0.0)), callback)
    assert isinstance(net[1], nn.BatchNorm2d) and torch.all(net[1].weight == 0.3)
    assert torch.all(callback.initial_values["net.1"]["scale"] == 0.3)


def test_model_without_bn_trains_unchanged_with_one_warning() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(108, 3))
    plain = copy.deepcopy(net)
    with pytest.warns(UserWarning, match="found no batch-norm layer") as record:
        fit(Classifier(net, SGD), BNInit())
    assert sum("batch-norm" in str(w.message) for w in record) == 1
    fit(Classifier(plain, SGD), BNInit(1.0, 1.0, exempt_weight_decay=False))
    assert_same_params(net, plain, rtol=0, atol=0)


@pytest.mark.parametrize("stage", ["validate", "test", "predict"])
def test_other_stages_never_touch_weights(stage: str) -> None:
    model = Classifier(tiny_net(), SGD)
    before = copy.deepcopy(model.state_dict())
    getattr(trainer(callbacks=[BNInit(input_norm=True)]), stage)(model, loader(dataset(dtype=torch.float32)))
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_sync_batchnorm_conversion_keeps_the_treatment() -> None:
    """What Trainer(sync_batchnorm=True) does after setup: new SyncBatchNorm modules, same Parameter objects."""
    net = tiny_net()
    callback = BNInit()
    model = Classifier(net, SGD)
    t = trainer(callbacks=[callback], max_epochs=1, limit_train_batches=1)
    callback.setup(t, model, "fit")
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(net))
    assert all(isinstance(m, nn.SyncBatchNorm) for m in bn_layers(converted))
    assert init_bn_(converted, 0.2, force=True).initialized == ["1", "4", "9"]
    model.net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    roles = callback._update.splitter.roles
    assert {id(m.weight) for m in bn_layers(model)} == {id(p) for p, role in roles.items() if role == "scale"}


# --- optimizers --------------------------------------------------------------------------------------------------

def test_unsupported_optimizer_gets_a_clear_error() -> None:
    class Lion(torch.optim.Optimizer):
        def __init__(self, params, lr: float = 1e-4) -> None:
            super().__init__(params, {"lr": lr})

        def step(self, closure=None):
            return closure() if closure else None

    with pytest.raises(TypeError, match=r"optimizer .*Lion.*bn_param_groups.*separable_optimizers=\[.*Lion\]"):
        fit(Classifier(tiny_net(), Lion), BNInit())
    with pytest.raises(TypeError, match="LBFGS"):
        fit(Classifier(tiny_net(), torch.optim.LBFGS), BNInit())


def test_declared_separable_optimizer_gets_the_exact_update() -> None:
    """A third-party optimizer passed as separable_optimizers trains exactly as with the hand-built three groups."""
    torch.manual_seed(0)
    start = tiny_net().double()
    plain_sgd = partial(PlainSGD, lr=0.05, weight_decay=1e-2)
    with pytest.raises(TypeError, match="PlainSGD"):
        fit(Classifier(copy.deepcopy(start), plain_sgd), BNInit())
    model = Classifier(copy.deepcopy(start), plain_sgd)
    fit(model, BNInit(separable_optimizers=[PlainSGD]), dtype=torch.float64, precision="64-true", max_epochs=2,
        limit_train_batches=3)
    expected = reference_fit(start, dataset(dtype=torch.float64), plain_sgd, None, 3, 2, init_scale=0.1,
                             divisor=100.0, lr=0.05, weight_decay=1e-2)
    assert_same_params(model.net, expected)


def test_unsupported_optimizer_without_bn_params_is_fine() -> None:
    """An optimizer holding no BN parameter the callback treats is never touched, whatever its class."""
    net = tiny_net()
    before = copy.deepcopy(net)
    with pytest.warns(UserWarning, match="found no batch-norm layer"):
        fit(Classifier(net, partial(torch.optim.LBFGS, lr=0.01)), BNInit(exclude="*"))
    assert not torch.equal(net[0].weight, before[0].weight)  # LBFGS did train
    assert torch.all(net[1].weight > 0.5)  # excluded layers kept their init of 1, not 0.1


def test_bn_param_groups_are_the_papers_three_groups() -> None:
    net = tiny_net()
    groups = bn_param_groups(net, lr=0.1, weight_decay=5e-4, scale_lr_divisor=100)
    by_role = {g["bninit"]: g for g in groups}
    assert by_role["scale"]["lr"] == pytest.approx(1e-3) and by_role["scale"]["weight_decay"] == 0
    assert by_role["shift"]["lr"] == 0.1 and by_role["shift"]["weight_decay"] == 0
    assert by_role["other"]["weight_decay"] == 5e-4
    assert [id(p) for p in by_role["scale"]["params"]] == [id(m.weight) for m in bn_layers(net)]
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    with pytest.raises(ValueError, match="scale_lr_divisor"):
        bn_param_groups(net, lr=0.1, scale_lr_divisor=0.5)


# --- input BN ----------------------------------------------------------------------------------------------------

def test_input_norm_on_forward() -> None:
    model = Classifier(tiny_net(), SGD)
    seen = []
    model.net.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    fit(model, BNInit(init_scale=0.2, input_norm=True))
    norm = model.bninit_input_norm
    assert isinstance(norm, InputNorm) and norm.num_features == 3
    assert norm.bias.requires_grad is False and torch.all(norm.bias == 0)
    assert "bninit_input_norm.weight" in model.state_dict()
    assert not torch.allclose(norm.weight, torch.full((3,), 0.2 * RELU_STD))  # trained by the user's optimizer
    x = dataset(dtype=torch.float32).tensors[0][:8]
    model.train()
    model(x)
    expected = nn.functional.batch_norm(x, None, None, norm.weight, norm.bias, training=True, eps=norm.eps)
    torch.testing.assert_close(seen[-1], expected)


def test_input_norm_initial_scale_and_submodule() -> None:
    model = Classifier(tiny_net(), partial(torch.optim.SGD, lr=0.0))
    fit(model, BNInit(init_scale=0.2, input_norm="net"), limit_train_batches=0)
    assert torch.allclose(model.net.bninit_input_norm.weight, torch.full((3,), 0.2 * 0.58))
    with pytest.raises(ValueError, match="has no submodule of that name.*'net'"):
        fit(Classifier(tiny_net(), SGD), BNInit(input_norm="backbone"))


def test_input_norm_loads_for_test_in_a_fresh_process(tmp_path) -> None:
    model = Classifier(tiny_net(), SGD)
    t = trainer(callbacks=[BNInit(input_norm=True)], max_epochs=1, limit_train_batches=2,
                default_root_dir=tmp_path)
    t.fit(model, loader(dataset(dtype=torch.float32)))
    t.save_checkpoint(tmp_path / "last.ckpt")
    fresh = Classifier(tiny_net(), SGD)
    trainer(callbacks=[BNInit(input_norm=True)]).test(fresh, loader(dataset(dtype=torch.float32)),
                                                       ckpt_path=tmp_path / "last.ckpt")
    torch.testing.assert_close(fresh.bninit_input_norm.weight, model.bninit_input_norm.weight)


# --- checkpoints -------------------------------------------------------------------------------------------------

def test_state_dict_is_weights_only_safe(tmp_path) -> None:
    callback = BNInit(include=["net.*", re.compile("net.1")])
    fit(Classifier(tiny_net(), SGD), callback)
    torch.save(callback.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["settings"]["include"] == ["net.*", "net.1"]
    assert torch.all(state["initial"]["net.1"]["scale"] == 0.1)


def test_resume_equals_uninterrupted_run(tmp_path) -> None:
    torch.manual_seed(0)
    net = tiny_net().double()
    cosine = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=12)  # noqa: E731
    data = loader(dataset())

    def run(epochs: int, start: nn.Module, ckpt=None, callback=None) -> tuple[Classifier, object]:
        model = Classifier(copy.deepcopy(start), partial(torch.optim.Adam, lr=0.01, weight_decay=1e-2), cosine)
        t = trainer(precision="64-true", callbacks=[callback or BNInit(input_norm=True)], max_epochs=epochs,
                    limit_train_batches=4, default_root_dir=tmp_path)
        t.fit(model, data, ckpt_path=ckpt)
        return model, t

    full, _ = run(3, net)
    half, t = run(2, net)
    t.save_checkpoint(tmp_path / "half.ckpt")
    initial_scales = {k: v["scale"].clone() for k, v in t.callbacks[0].initial_values.items()}
    resumed_callback = BNInit(input_norm=True)
    resumed, _ = run(3, net, ckpt=tmp_path / "half.ckpt", callback=resumed_callback)
    assert_same_params(resumed, full, rtol=0, atol=0)
    for name, scale in initial_scales.items():
        assert torch.equal(resumed_callback.initial_values[name]["scale"], scale)


def test_resume_with_other_settings_warns_and_keeps_the_current_ones(tmp_path) -> None:
    model = Classifier(tiny_net(), SGD)
    t = trainer(callbacks=[BNInit()], max_epochs=1, limit_train_batches=1, default_root_dir=tmp_path)
    t.fit(model, loader(dataset(dtype=torch.float32)))
    t.save_checkpoint(tmp_path / "a.ckpt")
    callback = BNInit(scale_lr_divisor=10)
    with pytest.warns(UserWarning, match=r"scale_lr_divisor: 100.0 -> 10.0"):
        trainer(callbacks=[callback], max_epochs=2, limit_train_batches=1).fit(
            Classifier(tiny_net(), SGD), loader(dataset(dtype=torch.float32)), ckpt_path=tmp_path / "a.ckpt"
        )
    assert callback.method_settings.scale_lr_divisor == 10


def test_input_norm_is_treated_whatever_include_says() -> None:
    callback = BNInit(input_norm=True, include="net.1")
    fit(Classifier(tiny_net(), SGD), callback, limit_train_batches=0)
    assert callback.layer_names == ["bninit_input_norm", "net.1"]


def test_input_norm_survives_sync_batchnorm_conversion() -> None:
    """After Trainer(sync_batchnorm=True) converts it, a later stage must find it, not add a fresh one."""
    model = Classifier(tiny_net(), SGD)
    fit(model, BNInit(input_norm=True))
    trained = model.bninit_input_norm.weight.detach().clone()
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted.bninit_input_norm, nn.SyncBatchNorm)
    hooks = len(converted._forward_pre_hooks)
    trainer(callbacks=[BNInit(input_norm=True)]).validate(converted, loader(dataset(dtype=torch.float32)))
    assert torch.equal(converted.bninit_input_norm.weight, trained)
    assert len(converted._forward_pre_hooks) == hooks


# --- state key, 0.1 checkpoints, one BNInit per Trainer -----------------------------------------------------------

def test_state_key_is_lightnings_default() -> None:
    assert BNInit().state_key == "BNInit" == BNInit(scale_lr_divisor=10, monitor=False).state_key


@pytest.mark.parametrize("version", ["0.1", "0.2"])
def test_checkpoint_of_an_older_version_resumes(tmp_path, version: str) -> None:
    """0.1 stored the callback's state under "BNInit" (as 0.3 does), 0.2 under "BNInit{<settings>}"; resuming reads
    either (and the monitor measures from it)."""
    torch.manual_seed(0)
    net = tiny_net().double()
    data = loader(dataset())

    def run(epochs: int, ckpt=None, callback=None) -> tuple[Classifier, object]:
        model = Classifier(copy.deepcopy(net), partial(torch.optim.Adam, lr=0.01, weight_decay=1e-2))
        t = trainer(precision="64-true", callbacks=[callback or BNInit(monitor=False)], max_epochs=epochs,
                    limit_train_batches=3, default_root_dir=tmp_path)
        t.fit(model, data, ckpt_path=ckpt)
        return model, t

    full, _ = run(2)
    _, t = run(1)
    t.save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=True)
    (state,) = checkpoint["callbacks"].values()
    legacy = {"settings": state["settings"], "layers": state["layers"],
              "initial": {name: {"scale": torch.full_like(v["scale"], 0.125), "shift": v["shift"]}
                          for name, v in state["initial"].items()}}
    key = "BNInit" if version == "0.1" else "BNInit" + repr(state["settings"])  # 0.2: the settings in the key
    checkpoint["callbacks"] = {key: legacy}  # one key, no monitor state
    torch.save(checkpoint, tmp_path / "v01.ckpt")

    callback = BNInit(monitor=BNMonitor(log_every_n_steps=1, plots=False, console_summary=False))
    resumed, _ = run(2, ckpt=tmp_path / "v01.ckpt", callback=callback)
    assert_same_params(resumed.net, full.net, rtol=0, atol=0)
    assert sorted(callback.initial_values) == ["net.1", "net.4", "net.9"]
    assert all(torch.all(v["scale"] == 0.125) for v in callback.initial_values.values())
    assert callback.monitor.history.initial_scale["net.1"] == pytest.approx(0.125)  # drift from the saved start


def test_two_bninit_callbacks_are_refused() -> None:
    # With Lightning's default state_key, Lightning itself refuses a second BNInit when the Trainer is built ...
    with pytest.raises(RuntimeError, match=r"more than one stateful callback of type `BNInit`"):
        fit(Classifier(tiny_net(), SGD), BNInit(), callbacks_extra=[BNInit(include="net.1")])
    # ... and one added to the callbacks afterwards is refused at setup, with the reason.
    t = trainer(callbacks=[BNInit()])
    t.callbacks.append(BNInit(include="net.1"))
    with pytest.raises(ValueError, match=r"2 BNInit callbacks were given to the Trainer; each would apply"):
        t.fit(Classifier(tiny_net(), SGD), loader(dataset(dtype=torch.float32)))


def test_explicit_signatures_agree_with_the_one_declaration() -> None:
    """BNInit and attach spell their options out (jsonargparse builds the --bninit flag from BNInit's signature);
    MethodSettings declares them once. Same names, and defaults that give the same settings."""
    import dataclasses
    import inspect

    from lightning_bninit import attach
    from lightning_bninit.method.settings import MethodSettings

    declared = {f.name: f.default for f in dataclasses.fields(MethodSettings)}
    for function in (BNInit.__init__, attach):
        params = {name: p.default for name, p in inspect.signature(function).parameters.items()
                  if p.default is not inspect.Parameter.empty and name != "monitor"}
        assert set(params) == set(declared), function
        assert MethodSettings(**params) == MethodSettings(), function
    assert BNInit().method_settings == MethodSettings()
    with pytest.raises(ValueError, match="init_scale"):
        MethodSettings(init_scale=0)  # it validates itself when built


# --- 9. booleans are booleans ----------------------------------------------------------------------------------------

BOOLEAN_OPTIONS = {
    "BNInit.force": lambda v: BNInit(force=v),
    "BNInit.exempt_weight_decay": lambda v: BNInit(exempt_weight_decay=v),
    "attach.force": lambda v: attach(tiny_net(), torch.optim.SGD(tiny_net().parameters(), lr=0.1), force=v),
    "attach.exempt_weight_decay": lambda v: attach(tiny_net(), torch.optim.SGD(tiny_net().parameters(), lr=0.1),
                                                   exempt_weight_decay=v),
    "BNMonitor.activations": lambda v: BNMonitor(activations=v),
    "BNMonitor.histograms": lambda v: BNMonitor(histograms=v),
    "BNMonitor.console_summary": lambda v: BNMonitor(console_summary=v),
    "BNMonitor.plots": lambda v: BNMonitor(plots=v),
    "BNMonitor.full": lambda v: BNMonitor(full=v),
}


#: options whose None has a meaning of its own: plots=None plots when matplotlib is there, histograms=None follows full
NONE_ALLOWED = {"BNMonitor.plots", "BNMonitor.histograms"}


@pytest.mark.parametrize(("option", "value"), [
    (option, value) for option in sorted(BOOLEAN_OPTIONS) for value in ["false", "no", 0, 1, None]
    if not (value is None and option in NONE_ALLOWED)
])
def test_boolean_options_take_only_booleans(option: str, value: Any) -> None:
    name = option.split(".")[1]
    allowed = "True, False or '1d'" if name == "exempt_weight_decay" else "True or False"
    with pytest.raises(ValueError, match=rf"{name} must be {re.escape(allowed)}.*got .*{re.escape(repr(value))}"):
        BOOLEAN_OPTIONS[option](value)


def test_boolean_options_accept_booleans() -> None:
    assert BNInit(force=False).method_settings.force is False
    assert BNInit(exempt_weight_decay=False).method_settings.exempt_weight_decay is False
    assert BNMonitor(activations=False, plots=False).activations is False

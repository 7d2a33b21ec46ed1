"""The revised update through a Trainer: mixed precision, skipped steps, manual optimization and several
optimizers, and the setups users have: layers built in ``configure_model``/``setup``, callback order with
``BaseFinetuning``, raw optimizers in manual optimization, what user code (callbacks, hooks, clipping, closures) sees
while the optimizer steps, group-level optimizer state, cyclic schedules, zero-initialized residual scales.

Each twin test trains twice with identical numerics: once with the user's plain optimizer and BNInit, once with the
hand-built three groups of ``bn_param_groups`` (which BNInit recognizes and leaves alone). Equal results show the
update is the paper's and is not applied twice. Exactness in float64 against hand-built groups.
"""

from __future__ import annotations

import copy
import warnings
from functools import partial
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from support.helpers import (
    Classifier, assert_same_params, dataset, loader, plain_loop, reference_fit, tiny_net, trainer,
)
from support.loops import PlainSGD
from lightning_bninit import BNInit, attach, bn_param_groups

LR, WD, INIT, C = 0.05, 1e-2, 0.1, 100.0
SGD = partial(torch.optim.SGD, lr=LR, momentum=0.9, weight_decay=WD)
TRAINABLE_SGD = lambda params: SGD([p for p in params if p.requires_grad])  # noqa: E731 - what BaseFinetuning needs
GROUPED = {"lr": LR, "weight_decay": WD, "scale_lr_divisor": C}
COSINE = lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)  # noqa: E731


def fit64(model: pl.LightningModule, callbacks: list, epochs: int = 2, batches: int = 3, ckpt_path: Any = None,
          **kwargs: Any) -> pl.Trainer:
    t = trainer(precision="64-true", callbacks=callbacks, max_epochs=epochs, limit_train_batches=batches, **kwargs)
    t.fit(model, loader(dataset()), ckpt_path=ckpt_path)
    return t


def reference(start: nn.Module, make_optimizer=SGD, steps: int = 3, epochs: int = 2) -> nn.Module:
    return reference_fit(start, dataset(), make_optimizer, None, steps, epochs, init_scale=INIT, divisor=C, lr=LR,
                         weight_decay=WD)


# --- 1. mixed precision, skipped steps, several optimizers ------------------------------------------------------

class GroupCount(pl.Callback):
    """Records how many param groups the user's optimizer shows whenever Lightning hands control to user code."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.steps = 0

    def on_fit_start(self, trainer: pl.Trainer, *args: Any) -> None:
        trainer.optimizers[0].register_step_post_hook(lambda *_: setattr(self, "steps", self.steps + 1))

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        self.seen.add(len(trainer.optimizers[0].param_groups))


def twin_fits(inf_at: set[int] = frozenset(), **trainer_kwargs: Any) -> tuple[nn.Module, nn.Module, list[GroupCount]]:
    torch.manual_seed(0)
    net = tiny_net()
    counters = [GroupCount(), GroupCount()]
    results = []
    for grouped, counter in zip((None, GROUPED), counters):
        model = Classifier(copy.deepcopy(net), SGD, COSINE, grouped=grouped)
        model.inf_at = set(inf_at)
        trainer(callbacks=[BNInit(scale_lr_divisor=C), counter], max_epochs=2, limit_train_batches=4,
                **trainer_kwargs).fit(model, loader(dataset(dtype=torch.float32)))
        results.append(model.net)
    return results[0], results[1], counters


def test_bf16_mixed() -> None:
    treated, reference, (counter, reference_counter) = twin_fits(precision="bf16-mixed")
    assert_same_params(treated, reference, rtol=0, atol=0)
    assert counter.seen == {1} and reference_counter.seen == {3}  # never a leftover split in user code
    assert counter.steps == reference_counter.steps == 8


def test_fp16_gradscaler_with_skipped_steps() -> None:
    # A GradScaler on CPU exercises the AMP path: the hook runs before scaler.step, which may skip the step.
    make_plugin = lambda: MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))  # noqa: E731
    skips = {1, 4}
    torch.manual_seed(0)
    net = tiny_net()
    runs = []
    for grouped in (None, GROUPED):
        model = Classifier(copy.deepcopy(net), SGD, COSINE, grouped=grouped)
        model.inf_at = skips
        counter = GroupCount()
        t = trainer(callbacks=[BNInit(scale_lr_divisor=C), counter], max_epochs=2, limit_train_batches=4,
                    plugins=[make_plugin()])
        t.fit(model, loader(dataset(dtype=torch.float32)))
        runs.append((model.net, counter, t.optimizers[0]))
    (treated, counter, optimizer), (reference, _, _) = runs
    assert_same_params(treated, reference, rtol=0, atol=0)
    assert counter.steps == 8 - len(skips)  # the scaler did skip those steps
    assert counter.seen == {1}
    assert len(optimizer.param_groups) == 1 and len(optimizer.param_groups[0]["params"]) == len(list(net.parameters()))


class TwoOptimizersManual(pl.LightningModule):
    """Manual optimization: the body and the head each have their own optimizer (SGD and Adam)."""

    def __init__(self, grouped: bool) -> None:
        super().__init__()
        self.automatic_optimization = False
        torch.manual_seed(0)
        net = tiny_net()
        self.body, self.head = net[:8], net[8:]
        self.grouped = grouped

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        for opt in self.optimizers():
            opt.zero_grad()
        loss = nn.functional.cross_entropy(self.head(self.body(x)), y)
        self.manual_backward(loss)
        for opt in self.optimizers():
            opt.step()

    def configure_optimizers(self) -> Any:
        def params(module: nn.Module, wd: float) -> Any:
            if self.grouped:
                return bn_param_groups(module, lr=LR, weight_decay=wd, scale_lr_divisor=C)
            return module.parameters()

        return (
            torch.optim.SGD(params(self.body, WD), lr=LR, momentum=0.9, weight_decay=WD),
            torch.optim.Adam(params(self.head, 0.0), lr=LR),
        )


def test_manual_optimization_with_two_optimizers() -> None:
    trained = []
    for grouped in (False, True):
        model = TwoOptimizersManual(grouped).double()
        trainer(precision="64-true", callbacks=[BNInit(scale_lr_divisor=C)], max_epochs=2,
                limit_train_batches=3).fit(model, loader(dataset()))
        trained.append(model)
    assert_same_params(*trained)
    assert not torch.allclose(trained[0].head[1].weight, torch.full_like(trained[0].head[1].weight, 0.1))


def test_divisor_one_without_exemption_leaves_optimizer_untouched() -> None:
    """init_scale=1, c=1, no exemption is plain training: identical to no callback at all."""
    torch.manual_seed(0)
    net = tiny_net().double()
    trained = []
    for callbacks in ([], [BNInit(1.0, 1.0, exempt_weight_decay=False)]):
        model = Classifier(copy.deepcopy(net), SGD, COSINE)
        trainer(precision="64-true", callbacks=callbacks, max_epochs=1, limit_train_batches=4).fit(
            model, loader(dataset())
        )
        trained.append(model.net)
    assert_same_params(*trained, rtol=0, atol=0)


# --- 2. layers built in configure_model() or setup() ------------------------------------------------------------

class LateClassifier(Classifier):
    """Builds its network in ``configure_model`` or ``setup`` (a copy of ``start``), as Lightning recommends for
    large, sharded or compiled models."""

    def __init__(self, start: nn.Module, where: str, **kwargs: Any) -> None:
        super().__init__(None, SGD, **kwargs)  # type: ignore[arg-type]
        self.starts, self.where = [start], where  # in a list: not a submodule

    def _build(self) -> None:
        if self.net is None:
            self.net = copy.deepcopy(self.starts[0])

    def configure_model(self) -> None:
        if self.where == "configure_model":
            self._build()

    def setup(self, stage: str) -> None:
        if self.where == "setup":
            self._build()


@pytest.mark.parametrize("where", ["configure_model", "setup"])
def test_layers_built_late_are_treated_exactly(where: str) -> None:
    torch.manual_seed(0)
    start = tiny_net().double()
    model = LateClassifier(start, where)
    callback = BNInit(INIT, C)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*found no batch-norm layer.*")
        fit64(model, [callback])
    assert callback.layer_names == ["net.1", "net.4", "net.9"]
    assert torch.all(callback.initial_values["net.1"]["scale"] == INIT)
    assert_same_params(model.net, reference(start))


def test_resume_of_a_model_built_in_configure_model_is_exact(tmp_path) -> None:
    torch.manual_seed(7)
    start = tiny_net().double()

    def run(epochs: int, ckpt: Any = None) -> tuple[LateClassifier, pl.Trainer]:
        model = LateClassifier(start, "configure_model")
        t = fit64(model, [BNInit(INIT, C)], epochs=epochs, default_root_dir=tmp_path, ckpt_path=ckpt)
        return model, t

    full, _ = run(3)
    half, t = run(2)
    t.save_checkpoint(tmp_path / "half.ckpt")
    with warnings.catch_warnings():  # the values come from the checkpoint: not re-initialized, not "pretrained"
        warnings.filterwarnings("error", message=".*left the values.*")
        resumed, t = run(3, tmp_path / "half.ckpt")
    assert_same_params(resumed.net, full.net, rtol=0, atol=0)
    assert torch.all(t.callbacks[0].initial_values["net.1"]["scale"] == INIT)


def test_input_norm_with_a_model_built_in_configure_model() -> None:
    torch.manual_seed(0)
    model = LateClassifier(tiny_net().double(), "configure_model")
    callback = BNInit(input_norm=True, input_channels=3)
    fit64(model, [callback], epochs=1, batches=2)
    assert callback.layer_names[0] == "bninit_input_norm" and "net.1" in callback.layer_names
    with pytest.raises(ValueError, match=r"input_norm='net'.*configure_model.*__init__"):
        fit64(LateClassifier(tiny_net().double(), "configure_model"), [BNInit(input_norm="net")], epochs=1)
    with pytest.raises(ValueError, match=r"cannot tell how many channels.*configure_model.*input_channels"):
        fit64(LateClassifier(tiny_net().double(), "configure_model"), [BNInit(input_norm=True)], epochs=1)


# --- 3. callback order: BaseFinetuning ---------------------------------------------------------------------------

class Finetune(BaseFinetuning):
    """Freezes ``net[:upto]`` (BN included) before training and unfreezes it at epoch 1, as one new param group, or
    (``grouped``) as the three hand-built groups of ``bn_param_groups``: the reference."""

    def __init__(self, upto: int, grouped: bool = False) -> None:
        super().__init__()
        self.upto, self.grouped = upto, grouped

    def freeze_before_training(self, pl_module: pl.LightningModule) -> None:
        self.freeze(pl_module.net[: self.upto], train_bn=False)

    def finetune_function(self, pl_module: pl.LightningModule, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if epoch != 1:
            return
        body = pl_module.net[: self.upto]
        if not self.grouped:
            self.unfreeze_and_add_param_group(body, optimizer, lr=LR, train_bn=True)
            return
        self.make_trainable(body)
        for group in bn_param_groups(body, **GROUPED):
            optimizer.add_param_group(group)


@pytest.mark.parametrize("upto", [8, 11])  # 11: the optimizer holds no BN parameter until the unfreeze
def test_callback_order_does_not_matter_with_base_finetuning(upto: int) -> None:
    torch.manual_seed(1)
    start = tiny_net().double()
    runs = []
    for order, grouped in (("finetune_first", False), ("bninit_first", False), ("bninit_first", True)):
        model = Classifier(copy.deepcopy(start), TRAINABLE_SGD)
        callbacks = [Finetune(upto, grouped), BNInit(INIT, C)]
        fit64(model, callbacks if order == "finetune_first" else callbacks[::-1])
        assert torch.all(model.net[1].weight != INIT)  # initialized at INIT, then trained in epoch 1
        runs.append(model.net)
    assert_same_params(runs[0], runs[2])
    assert_same_params(runs[1], runs[2])


def test_frozen_layers_at_default_are_initialized_and_pretrained_ones_kept() -> None:
    net = tiny_net()
    net[1].requires_grad_(False)
    net[4].requires_grad_(False)
    with torch.no_grad():
        net[4].weight.fill_(0.7)
    with pytest.warns(UserWarning, match=r"left the values of 1 BN layer\(s\) alone .*net\.4"):
        fit64(Classifier(net.double(), SGD), [BNInit()], epochs=1, batches=1)
    assert torch.all(net[1].weight == INIT) and torch.allclose(net[4].weight, torch.tensor(0.7, dtype=torch.float64))


# --- 4. one step mechanism: the optimizer's own hooks -------------------------------------------------------------

class RawManual(Classifier):
    """Manual optimization with the raw optimizer: ``self.optimizers(use_pl_optimizer=False)`` or one kept on the
    module."""

    def __init__(self, net: nn.Module, how: str, grouped: dict | None = None) -> None:
        super().__init__(net, SGD, grouped=grouped)
        self.automatic_optimization = False
        self.how = how

    def configure_optimizers(self) -> Any:
        self.kept = super().configure_optimizers()
        return self.kept

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers(use_pl_optimizer=False) if self.how == "raw" else self.kept
        opt.zero_grad()
        x, y = batch
        self.manual_backward(nn.functional.cross_entropy(self(x), y))
        opt.step()


@pytest.mark.parametrize("how", ["raw", "kept"])
def test_manual_optimization_with_the_raw_optimizer_is_exact(how: str) -> None:
    torch.manual_seed(2)
    start = tiny_net().double()
    model = RawManual(copy.deepcopy(start), how)
    fit64(model, [BNInit(INIT, C)])
    assert_same_params(model.net, reference(start))


class Seen:
    """How many param groups the optimizer shows at each place user code runs."""

    def __init__(self) -> None:
        self.groups: dict[str, set[int]] = {}

    def record(self, where: str, optimizer: torch.optim.Optimizer) -> None:
        self.groups.setdefault(where, set()).add(len(optimizer.param_groups))


class Probe(pl.Callback):
    def __init__(self, seen: Seen, name: str) -> None:
        self.seen, self.name = seen, name

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.seen.record(self.name, trainer.optimizers[0])


class Watched(Classifier):
    def __init__(self, net: nn.Module, seen: Seen) -> None:
        super().__init__(net, SGD)
        self.seen = seen
        self.steps: list[int] = []

    def configure_optimizers(self) -> Any:
        optimizer = super().configure_optimizers()
        # Registered before BNInit's hooks (on_fit_start): runs right after the update, before the groups go back.
        optimizer.register_step_post_hook(lambda opt, *_: self.steps.append(len(opt.param_groups)))
        return optimizer

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        optimizer = self.trainer.optimizers[0]
        self.seen.record("forward", optimizer)
        loss = super().training_step(batch, batch_idx)
        loss.register_hook(lambda grad: self.seen.record("backward", optimizer))
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        self.seen.record("module", self.trainer.optimizers[0])

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        self.seen.record("clipping", self.trainer.optimizers[0])
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)


@pytest.mark.parametrize("precision", ["64-true", "16-mixed"])  # 16-mixed: a GradScaler on CPU, scaler.step
@pytest.mark.parametrize("bninit_first", [True, False])
def test_user_code_inside_the_step_sees_the_users_groups(bninit_first: bool, precision: str) -> None:
    torch.manual_seed(3)
    seen = Seen()
    callbacks = [Probe(seen, "before"), BNInit(INIT, C), Probe(seen, "after")]
    if bninit_first:
        callbacks = callbacks[1:] + callbacks[:1]
    model = Watched(tiny_net(), seen)
    precision_args: dict[str, Any] = {"precision": precision}
    if precision == "16-mixed":
        precision_args = {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))]}
    trainer(callbacks=callbacks, max_epochs=1, limit_train_batches=3, gradient_clip_val=1.0,
            **precision_args).fit(model, loader(dataset(dtype=torch.float32)))
    assert seen.groups == {k: {1} for k in ("forward", "backward", "before", "after", "module", "clipping")}
    # The update itself runs on the split (a GradScaler may skip a step: it then splits nothing).
    assert set(model.steps) == {3} and len(model.steps) == (3 if precision == "64-true" else len(model.steps))


def test_a_closure_given_to_step_sees_the_users_groups() -> None:
    torch.manual_seed(4)
    start = tiny_net().double()
    net = copy.deepcopy(start)
    optimizer = SGD(net.parameters())
    attach(net, optimizer)
    seen = []
    x, y = dataset(n=8).tensors

    def closure() -> torch.Tensor:
        seen.append(len(optimizer.param_groups))
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        optimizer.step(closure)
    assert seen == [1, 1, 1] and len(optimizer.param_groups) == 1
    expected = reference_fit(start, dataset(n=8), SGD, None, 1, 3, init_scale=INIT, divisor=C, lr=LR, weight_decay=WD)
    assert_same_params(net, expected)


def test_a_step_that_never_calls_its_closure_raises() -> None:
    class Lazy(torch.optim.SGD):
        def step(self, closure: Any = None) -> Any:  # ignores the closure
            return super().step()

    net = tiny_net()
    optimizer = Lazy(net.parameters(), lr=LR)
    attach(net, optimizer, separable_optimizers=[Lazy])
    with pytest.raises(RuntimeError, match="Lazy.step was given a closure and did not call it"):
        optimizer.step(lambda: None)
    assert len(optimizer.param_groups) == 1


# --- 5. optimizers that keep state in their param groups -----------------------------------------------------------

class CountingSGD(PlainSGD):
    """Keeps a step counter in each param group and decays its learning rate with it: lr / sqrt(step)."""

    def _update(self) -> None:
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad + group["weight_decay"] * p, alpha=-group["lr"] / group["step"] ** 0.5)


class GroupSizeSGD(CountingSGD):
    """Keeps state in its groups that depends on which parameters a group holds: it cannot be split exactly."""

    def _update(self) -> None:
        for group in self.param_groups:
            group["numel"] = sum(p.numel() for p in group["params"])
        super()._update()


def test_group_level_optimizer_state_reaches_the_users_group() -> None:
    torch.manual_seed(5)
    start = tiny_net().double()
    make = partial(CountingSGD, lr=LR, weight_decay=WD)
    net = copy.deepcopy(start)
    optimizer = make(net.parameters())
    attach(net, optimizer, separable_optimizers=[CountingSGD])
    plain_loop(net, optimizer, None, dataset(), 3, 2)
    assert optimizer.param_groups[0]["step"] == 6
    assert_same_params(net, reference(start, make))

    model = Classifier(copy.deepcopy(start), make)
    fit64(model, [BNInit(INIT, C, separable_optimizers=[CountingSGD])])
    assert_same_params(model.net, reference(start, make))


def test_group_state_that_differs_between_the_split_groups_is_refused() -> None:
    net = tiny_net().double()
    optimizer = GroupSizeSGD(net.parameters(), lr=LR, weight_decay=WD)
    attach(net, optimizer, separable_optimizers=[GroupSizeSGD])
    x, y = dataset().tensors
    nn.functional.cross_entropy(net(x[:8]), y[:8]).backward()
    with pytest.raises(TypeError, match=r"GroupSizeSGD.*'numel'.*bn_param_groups"):
        optimizer.step()


# --- 6. cyclic schedules -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheduler", ["onecycle", "cyclic"])
def test_cyclic_schedule_with_a_scalar_peak_on_bn_param_groups_warns(scheduler: str) -> None:
    def make_scheduler(opt: torch.optim.Optimizer) -> Any:
        if scheduler == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=10)
        return torch.optim.lr_scheduler.CyclicLR(opt, base_lr=LR / 10, max_lr=LR, step_size_up=2)

    model = Classifier(tiny_net(), SGD, make_scheduler, grouped=GROUPED)
    with pytest.warns(UserWarning, match=r"(OneCycleLR|CyclicLR).*same.*lr.*BN scales.*list"):
        fit64(model.double(), [BNInit(INIT, C)], epochs=1, batches=1)
    per_group = Classifier(tiny_net(), SGD, lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=10), grouped=GROUPED)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*BN scales.*")
        fit64(per_group.double(), [BNInit(INIT, C)], epochs=1, batches=1)


# --- 7. zero-initialized residual scales ----------------------------------------------------------------------------

def test_zero_initialized_residual_scales_are_named_as_such() -> None:
    net = tiny_net()
    with torch.no_grad():
        net[4].weight.zero_()
    with pytest.warns(UserWarning, match=r"zero-initialized.*net\.4.*force=True.*init_scale") as caught:
        fit64(Classifier(net.double(), SGD), [BNInit()], epochs=1, batches=1)
    assert not any("pretrained" in str(w.message) for w in caught)
    assert torch.all(net[1].weight == INIT) and torch.all(net[4].weight != INIT)
    forced = tiny_net()
    with torch.no_grad():
        forced[4].weight.zero_()
    fit64(Classifier(forced.double(), SGD), [BNInit(force=True)], epochs=1, batches=0)
    assert torch.all(forced[4].weight == INIT)

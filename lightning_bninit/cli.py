"""LightningCLI integration: one ``--bninit`` flag turns the callback on (off by default).

    python main.py fit --bninit=true                        # on, with the defaults (gamma 0.1, c 100)
    python main.py fit --bninit.init_scale=0.05             # on, with one option changed
    python main.py fit --bninit=false                       # off (the default)

Any LightningCLI script can also add the callback the generic way
(``--trainer.callbacks+=lightning_bninit.BNInit``). How the toggle is typed: ``docs/design.md``.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Optional, Union

from lightning_bninit import _extras

_extras.require("jsonargparse", "lightning_bninit.cli (the --bninit flag of LightningCLI)")

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI  # noqa: E402
from lightning.pytorch.trainer import Trainer  # noqa: E402

from lightning_bninit.callbacks.bninit import BNInit  # noqa: E402

__all__ = ["BNInitCLI", "BNInitOptions", "add_bninit_arguments", "bninit_callback_from_config", "with_bninit_callback"]


def _make_options_dataclass() -> type:
    hints = typing.get_type_hints(BNInit.__init__)
    fields = []
    for name, param in inspect.signature(BNInit.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = param.default if param.default is not param.empty else dataclasses.MISSING
        fields.append((name, hints.get(name, Any), dataclasses.field(default=default)))
    cls = dataclasses.make_dataclass("BNInitOptions", fields)
    # jsonargparse resolves the type by import path, so it must look like a module-level class here.
    cls.__module__ = __name__
    cls.__qualname__ = "BNInitOptions"
    cls.__doc__ = (BNInit.__doc__ or "") + (BNInit.__init__.__doc__ or "")  # parameter help, if documented
    return cls


#: Dataclass with the parameters of :class:`~lightning_bninit.BNInit` (same names, types, defaults).
BNInitOptions = _make_options_dataclass()


def add_bninit_arguments(parser: LightningArgumentParser, key: str = "bninit") -> None:
    """Add the ``--bninit`` toggle and its ``--bninit.<option>`` settings to a parser.

    Use it in your own ``LightningCLI`` subclass (``add_arguments_to_parser``) together with
    :func:`with_bninit_callback` in ``instantiate_trainer``, or just use :class:`BNInitCLI`.

    Args:
        parser: the (sub)command parser.
        key: the option name.

    Example::

        class MyCLI(LightningCLI):
            def add_arguments_to_parser(self, parser):
                add_bninit_arguments(parser)

            def instantiate_trainer(self, **kwargs):
                return super().instantiate_trainer(**with_bninit_callback(self, kwargs))
    """
    parser.add_argument(
        f"--{key}",
        type=Optional[Union[bool, BNInitOptions]],
        default=False,
        help=(
            "Revisiting Batch Norm Initialization (Davis & Frank, 2022). false (default): off; true: on with the "
            f"defaults; --{key}.<option>=VALUE sets an option and turns it on. Options: "
            + ", ".join(f.name for f in dataclasses.fields(BNInitOptions))
        ),
    )


def bninit_callback_from_config(value: Any) -> BNInit | None:
    """Build the callback from the parsed ``bninit`` value.

    Args:
        value: ``None``/``False`` (off), ``True`` (defaults), or the options as a jsonargparse
            ``Namespace``, a ``dict`` or a :class:`BNInitOptions` instance.

    Returns:
        The callback, or ``None`` when off.

    Raises:
        TypeError: for any other value.
    """
    if value is None or value is False:
        return None
    if value is True:
        return BNInit()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        options = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    elif hasattr(value, "as_dict"):  # jsonargparse Namespace
        options = value.as_dict()
    elif isinstance(value, dict):
        options = dict(value)
    else:
        raise TypeError(f"bninit must be true, false, null or a mapping of BNInit options, got {value!r}")
    return BNInit(**options)


def _section(cli: LightningCLI, config: Any) -> Any:
    return config.get(cli.subcommand, config) if getattr(cli, "subcommand", None) else config


def with_bninit_callback(cli: LightningCLI, trainer_kwargs: dict[str, Any], key: str = "bninit") -> dict[str, Any]:
    """Return ``trainer_kwargs`` with the BNInit callback appended to the trainer callbacks when enabled.

    The callbacks configured under ``trainer.callbacks`` are kept; BNInit goes after them.

    Args:
        cli: the running CLI (after ``instantiate_classes`` parsed and instantiated the config).
        trainer_kwargs: the keyword arguments given to ``instantiate_trainer``.
        key: the option name used with :func:`add_bninit_arguments`.

    Raises:
        ValueError: if BNInit is enabled here and also given in ``trainer.callbacks``.
    """
    callback = bninit_callback_from_config(_section(cli, cli.config).get(key))
    if callback is None:
        return trainer_kwargs
    trainer_cfg = _section(cli, cli.config_init).get("trainer") or {}
    existing = trainer_kwargs.get("callbacks", trainer_cfg.get("callbacks"))
    existing = [] if existing is None else list(existing) if isinstance(existing, (list, tuple)) else [existing]
    if any(isinstance(cb, BNInit) for cb in existing):
        raise ValueError(
            f"BNInit is enabled twice: by --{key} and in trainer.callbacks; keep one of them "
            f"(e.g. drop lightning_bninit.BNInit from trainer.callbacks and set --{key}.<option> instead)"
        )
    return {**trainer_kwargs, "callbacks": existing + [callback]}


class BNInitCLI(LightningCLI):
    """``LightningCLI`` with a ``--bninit`` flag for :class:`~lightning_bninit.BNInit` (off by default).

    Takes exactly the arguments of ``LightningCLI``. See the module docstring for the values the
    flag accepts.

    Example::

        # main.py
        from lightning_bninit.cli import BNInitCLI
        BNInitCLI(MyModel, MyDataModule)

        # shell
        python main.py fit --config base.yaml --bninit=true
        python main.py fit --config base.yaml --bninit.init_scale=0.05 --print_config
    """

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The core hook (not add_arguments_to_parser) so subclasses overriding that keep the flag.
        super().add_core_arguments_to_parser(parser)
        add_bninit_arguments(parser)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        return super().instantiate_trainer(**with_bninit_callback(self, kwargs))

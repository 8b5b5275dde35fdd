"""Model plugins: one family per file, builders registered by name through entry points.

:func:`build_model` is the one way from a name, a shape and ``key=value`` options to a module: it
resolves the options against the plugin's declaration (unknown keys, bad types and values are
:class:`~cnnbench.errors.ConfigError`), passes every declared option to the builder (builders take
them keyword-only, without defaults of their own), and names the model in the builder's errors.
``kernel_size`` is an ordinary model option (``--kernel-size N`` is shorthand for it).
"""

from __future__ import annotations

from typing import Any, Mapping

from cnnbench.errors import ModelInputError
from cnnbench.registry import MODELS, ModelPlugin, resolve_options


def resolve_model_options(name: str, options: Mapping[str, Any] | None = None) -> tuple[ModelPlugin, dict[str, Any]]:
    """The plugin and its full option dict (declared defaults filled in, values typed and checked)."""
    plugin = MODELS.get(name)
    given = dict(options or {})
    if "kernel_size" in given and plugin.option("kernel_size") is None:
        raise ModelInputError(f"model {name!r} takes no kernel size; drop --kernel-size")
    return plugin, resolve_options(plugin.options, given, owner=f"model {name!r}")


def build_model(
    name: str, *, num_classes: int, in_channels: int, image_size: tuple[int, int],
    options: Mapping[str, Any] | None = None,
):
    """Build registered model ``name`` for (in_channels, *image_size) inputs and ``num_classes`` outputs."""
    plugin, resolved = resolve_model_options(name, options)
    height, width = image_size
    try:
        return plugin.build(num_classes=num_classes, in_channels=in_channels, image_size=(height, width), **resolved)
    except ModelInputError as err:
        message = str(err)
        if message.startswith(f"model {name!r}"):
            raise
        raise ModelInputError(f"model {name!r} {message}" if message.startswith(("needs ", "uses ", "takes "))
                              else f"model {name!r}: {message}") from None

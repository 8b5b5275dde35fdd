"""Model summary: layer table, parameter counts, size and the predicted training memory (no data needed).

torchinfo walks the model with one zero image (eval mode, so BatchNorm statistics stay put); this
module turns its result into a plain dict (:func:`model_info`, what ``cnnbench info --json`` prints)
and text (:func:`format_info`; :func:`summary_text` does both, for ``model/summary.txt``).

Units: ``macs`` are multiply-accumulates for ONE image; ``size_mb`` is MB = 10**6 bytes (torchinfo's
unit: resnet152 with 10 classes is 58,164,298 float32 parameters = 232.66 MB).
Training memory (``memory_estimate_mb``, MiB = 2**20 bytes) is :func:`cnnbench.memory.predict`: the
real training step run on fake tensors, per optimizer, at the batch size given: the allocator's
peak (what ``torch.cuda.max_memory_allocated`` measures), not device-level memory (the CUDA context
and the allocator's cache come on top). ``cnnbench memory MODEL`` shows its breakdown.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cnnbench.config import OPTIMIZERS

BYTES_PER_MB = 1e6


def model_info(model: nn.Module, input_shape: tuple[int, int, int], batch_size: int = 64, *,
               optimizers: tuple[str, ...] | None = None, memory_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summary of ``model`` on (C, H, W) inputs as a JSON-ready dict.

    Keys: ``params``, ``trainable_params``, ``size_mb`` (all parameters), ``macs`` (per image),
    ``layers`` (every module torchinfo saw: ``name``, ``type``, ``depth``, ``output_shape`` per image,
    ``params``, ``macs``, ``leaf``), ``memory_estimate_mb`` ({optimizer: predicted peak MiB} for
    ``optimizers``, default every optimizer), ``memory`` ({optimizer: the prediction's breakdown}),
    ``memory_device``, plus ``input_shape``, ``batch_size``. ``memory_options`` go to
    :func:`cnnbench.memory.predict` (``device``, ``amp``, ``grad_accum``, ...; default device cpu).
    """
    from cnnbench.memory import predict

    from torchinfo import summary

    # device=None: torchinfo runs where the model already is instead of moving it
    stats = summary(model, input_size=(1, *input_shape), verbose=0, mode="eval", device=None,
                    col_names=("output_size", "num_params", "mult_adds"))
    names = {id(module): name for name, module in model.named_modules()}
    layers = [_layer_row(layer, names) for layer in stats.summary_list if layer.depth > 0 and not layer.is_recursive]
    _fill_container_macs(layers)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    moving = keras_moving_statistics(model)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    options = {"device": "cpu", **(memory_options or {})}
    predictions = {o: predict(model, tuple(input_shape), batch_size, o, **options) for o in (optimizers or OPTIMIZERS)}
    return {
        "params": params,
        "trainable_params": trainable,
        # Keras counts BatchNorm's moving mean/variance as non-trainable parameters (torch: buffers)
        "keras_params": params + moving,
        "keras_non_trainable_params": params - trainable + moving,
        "size_mb": round(weight_bytes / BYTES_PER_MB, 2),
        "macs": int(stats.total_mult_adds),
        "layers": layers,
        "memory_estimate_mb": {o: round(p.peak_mb, 2) for o, p in predictions.items()},
        "memory": {o: {k: round(v, 2) for k, v in {**p.breakdown(), "saved_activations_mb": p.saved_activations_mb,
                                                    "optimizer_state_size_mb": p.optimizer_state_size_mb,
                                                    "eval_peak_mb": p.eval_peak_mb}.items()}
                   for o, p in predictions.items()},
        "memory_device": options["device"],
        "memory_unit": "MiB",
        "input_shape": list(input_shape),
        "batch_size": batch_size,
    }


def keras_moving_statistics(model: nn.Module) -> int:
    """Entries of every BatchNorm's running mean and variance: what Keras adds to its parameter
    total as "non-trainable params" (LeNet-5 + BN: (6 + 16 + 120) x 2 = 284)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
            total += sum(b.numel() for b in (m.running_mean, m.running_var) if b is not None)
    return total


def _layer_row(layer, names: dict[int, str]) -> dict[str, Any]:
    return {
        "name": names.get(layer.layer_id, layer.var_name),
        "type": layer.class_name,
        "depth": layer.depth,
        "output_shape": list(layer.output_size[1:]) if layer.output_size else [],
        "params": int(layer.num_params),
        "macs": int(layer.macs) if layer.is_leaf_layer else 0,
        "leaf": bool(layer.is_leaf_layer),
    }


def _fill_container_macs(layers: list[dict[str, Any]]) -> None:
    """torchinfo gives MACs for leaf layers only; a container's MACs are its leaves' sum."""
    leaves = [row for row in layers if row["leaf"]]
    for row in layers:
        if not row["leaf"]:
            prefix = row["name"] + "."
            row["macs"] = sum(leaf["macs"] for leaf in leaves if leaf["name"].startswith(prefix))


def format_info(info: dict[str, Any], *, max_depth: int | None = None) -> str:
    """The human-readable summary: layer table, totals, size and memory per optimizer."""
    rows = [r for r in info["layers"] if max_depth is None or r["depth"] <= max_depth]
    table = [("Layer (type)", "Output shape", "Params", "MACs")] + [
        ("  " * (r["depth"] - 1) + f"{r['name']} ({r['type']})", "x".join(map(str, r["output_shape"])) or "--",
         f"{r['params']:,}", f"{r['macs']:,}")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    rule = "-" * (sum(widths) + 6)
    lines = [rule]
    for i, row in enumerate(table):
        lines.append(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}")
        if i == 0:
            lines.append(rule)
    hidden = len(info["layers"]) - len(rows)
    if hidden:
        lines.append(f"({hidden} layers deeper than depth {max_depth} not shown)")
    c, h, w = info["input_shape"]
    lines += [
        rule,
        f"Input: {c}x{h}x{w}",
        f"Total params: {info['params']:,}",
        f"Trainable params: {info['trainable_params']:,}",
        f"Non-trainable params: {info['params'] - info['trainable_params']:,}",
        f"Keras-style (BatchNorm moving statistics counted): {info['keras_params']:,} total / "
        f"{info['trainable_params']:,} trainable / {info['keras_non_trainable_params']:,} non-trainable",
        f"Model size (float32 weights): {info['size_mb']:.2f} MB",
        f"MACs per image: {info['macs']:,}",
        rule,
        f"Predicted training memory, batch size {info['batch_size']}, on {info['memory_device']}: the allocator's peak "
        f"in MiB, not device-level memory (the CUDA context comes on top); cnnbench memory shows the breakdown",
    ]
    lines += [f"  {optimizer:<9} {mb:>10.2f} MiB  (activations saved for backward "
              f"{info['memory'][optimizer]['saved_activations_mb']:.2f}, optimizer state "
              f"{info['memory'][optimizer]['optimizer_state_size_mb']:.2f})"
              for optimizer, mb in info["memory_estimate_mb"].items()]
    return "\n".join(lines)


def summary_text(model: nn.Module, input_shape: tuple[int, int, int], batch_size: int = 64,
                 *, max_depth: int | None = None, optimizers: tuple[str, ...] | None = None,
                 memory_options: dict[str, Any] | None = None) -> str:
    """:func:`model_info` formatted as text; what ``model/summary.txt`` holds."""
    info = model_info(model, input_shape, batch_size, optimizers=optimizers, memory_options=memory_options)
    return format_info(info, max_depth=max_depth)

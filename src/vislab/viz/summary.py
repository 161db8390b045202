"""The architecture table ``Layer (type) | Output Shape | Param #`` with parameter totals.

torchinfo runs the forward pass and counts; this module lays the leaf layers out in execution
order, as the course reports print them, plus any layer with parameters of its own beside its
children's (timm's BatchNormAct2d: a BatchNorm holding its activation), so the rows add up to the
total.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def architecture_table(model: nn.Module, input_size: tuple[int, int, int], *, batch: int = 1) -> str:
    """Render the table for ``model`` on an input of shape ``(batch, *input_size)``.

    Example:
        >>> print(architecture_table(build_model("vgg16_bn", num_classes=50), (3, 32, 32)))
        ... Total params: 134,473,842
    """
    import torchinfo

    stats = torchinfo.summary(model, input_size=(batch, *input_size), depth=100, verbose=0,
                              col_names=("output_size", "num_params"), device="cpu")
    rows = []
    count = 0
    for layer in stats.summary_list:
        own = layer.num_params if layer.is_leaf_layer else layer.leftover_params()
        if not layer.executed or not (layer.is_leaf_layer or own > 0):
            continue
        count += 1
        shape = "[" + ", ".join(["-1", *map(str, layer.output_size[1:])]) + "]" if layer.output_size else "-"
        params = 0 if layer.is_recursive else own
        rows.append((f"{layer.class_name}-{count}", shape, f"{params:,}"))
    w1 = max(25, *(len(r[0]) for r in rows)) + 2
    w2 = max(25, *(len(r[1]) for r in rows)) + 2
    width = w1 + w2 + 15
    lines = ["=" * width, f"{'Layer (type)':<{w1}}{'Output Shape':<{w2}}{'Param #':>15}", "=" * width]
    lines += [f"{a:<{w1}}{b:<{w2}}{c:>15}" for a, b, c in rows]
    total, trainable = stats.total_params, stats.trainable_params
    lines += [
        "=" * width,
        f"Total params: {total:,}",
        f"Trainable params: {trainable:,}",
        f"Non-trainable params: {total - trainable:,}",
        "-" * width,
        f"Input size: {[batch, *input_size]}",
        f"Forward/backward pass size (MB): {stats.total_output_bytes / 1e6:,.2f}",
        f"Params size (MB): {stats.total_param_bytes / 1e6:,.2f}",
        "=" * width,
    ]
    return "\n".join(lines)


def trained_input(task: str, meta: dict[str, Any], recipe: dict[str, Any]) -> tuple[int, int, int]:
    """The (3, H, W) input a trained network's table is shown at: a classifier at the size it
    trained at (the square of the recipe's ``image_size``, else the stored images' own size), a
    segmenter at its tiles' (the recipe's ``input_hw``, else the most common tile's, else 512x512)."""
    stored = meta.get("stored_hw")
    if task == "cls":
        side = meta.get("image_size") or recipe.get("image_size")
        h, w = (side, side) if side else (stored or (32, 32))
        return 3, int(h), int(w)
    h, w = recipe.get("input_hw") or stored or (512, 512)
    return 3, int(h), int(w)


def trained_table(net: nn.Module, task: str, meta: dict[str, Any], recipe: dict[str, Any], *,
                  size: tuple[int, int, int] | None = None) -> str:
    """The table of a trained network as it trained: at its input (:func:`trained_input`, unless
    ``size``), with the submodules its recipe froze (``freeze``) counted as not trainable."""
    from vislab.config import names_field
    from vislab.models.freeze import freeze_prefixes

    freeze_prefixes(net, tuple(names_field(recipe.get("freeze")) or ()), model=str(recipe.get("model")))
    return architecture_table(net, size or trained_input(task, meta, recipe))

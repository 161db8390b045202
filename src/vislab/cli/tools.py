"""``vislab`` commands beside the two pipelines: models, recipes, summary, export, report, demo,
runs and the cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from vislab.cli.common import (
    app, _command_line, _members, OnceGroup, _one_run, out, _output, _run_data, _write_json,
)
from vislab.errors import VislabError


@app.command("models")
def models_cmd(pattern: str = typer.Argument("*", help="Shell pattern, e.g. 'fcn*'.")) -> None:
    """List registered models (plus timm:NAME and smp:ARCH:ENCODER families)."""
    from vislab.models import get_entry, list_models

    names = list_models(pattern)
    if not names:
        raise VislabError(None, f"no registered model matches {pattern!r}; `vislab models` lists them all "
                                "(and timm:NAME, smp:ARCH:ENCODER name models of those libraries)")
    t = Table()
    t.add_column("name", no_wrap=True)  # whole, to copy; the description wraps instead
    t.add_column("task")
    t.add_column("input")
    t.add_column("description", overflow="fold")
    for name in names:
        e = get_entry(name)
        t.add_row(name, e.task, "x".join(map(str, e.input_size)), e.description)
    out.print(t)
    out.print("Also: timm:NAME (any timm classifier), smp:ARCH:ENCODER (e.g. smp:unet:resnet34)")


@app.command("recipes")
def recipes_cmd() -> None:
    """List the shipped recipes, one line each."""
    from vislab.config import load_recipe, shipped_recipes

    for name, path in sorted(shipped_recipes().items()):
        r = load_recipe(str(path))
        first = _first_sentence(path.read_text())
        length = f"{r.budget_minutes:g} min" if r.budget_minutes else f"{r.epochs} ep"  # a budget sets the epochs
        typer.echo(f"{name:<18} {r.task:<4} {r.model:<36} {length:>7}  {first}")


def _first_sentence(text: str) -> str:
    """The first sentence of a recipe's opening comment (which may run over several lines)."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            if lines:
                break
            continue
        if not line[1:].strip():
            if lines:
                break
            continue
        lines.append(line[1:].strip())
    words = " ".join(lines)
    end = words.find(". ")
    return words if end < 0 else words[: end + 1]


@app.command("summary")
def summary_cmd(
    model: str = typer.Argument(..., help="Registry name (e.g. vgg16_bn or fcn32s_vgg16), or a run folder or checkpoint: "
                                          "the trained network, at its input: a classifier's training side, a segmenter's "
                                          "whole tile as it predicts (not the training crop; --input sets another)."),
    num_classes: int = typer.Option(None, "--num-classes", help="Classes of a registry model (default 50 for cls, 7 for seg)."),
    input: tuple[int, int, int] = typer.Option(None, "--input", help="Input C H W (default: the model's)."),
) -> None:
    """Print the architecture table: Layer (type) | Output Shape | Param #, with totals."""
    from vislab.models import build_model, get_entry
    from vislab.viz.summary import architecture_table, trained_table

    _one_run(model, "an architecture table shows one network")
    if num_classes is not None and num_classes < 1:
        raise VislabError("--num-classes", f"must be >= 1, got {num_classes}")
    if input is not None and (input[0] != 3 or min(input) < 1):
        raise VislabError("--input", f"must be 3 H W with H, W >= 1 (RGB), got {' '.join(map(str, input))}")
    trained = Path(model).exists()
    if trained:  # a trained network: its own classes and input size, its frozen layers
        net, task, meta, recipe = _trained_network(Path(model), num_classes)
        model = Path(model).name
    else:
        entry = get_entry(model)
        net = build_model(model, num_classes=entry.course_classes if num_classes is None else num_classes)
    if input is not None:
        from vislab.models.input_side import check_side

        check_side(net, min(input[1:]), model=model, setting="--input")
    size = tuple(input) if input else None
    table = trained_table(net, task, meta, recipe, size=size) if trained else \
        architecture_table(net, size or entry.input_size)
    out.print(table, markup=False)


def _trained_network(path: Path, num_classes: int | None) -> tuple[Any, str, dict[str, Any], dict[str, Any]]:
    """The network of a run folder or checkpoint, its task, metadata and recipe."""
    from vislab.models.checkpoints import check_readable, checkpoint_file, load_network

    if num_classes is not None:
        raise VislabError("--num-classes", f"{path} is a trained network with its own classes; drop --num-classes")
    ckpt = checkpoint_file(path)
    task = check_readable(ckpt, "`summary` takes a registry name, a run folder or a checkpoint").get("task")
    if task not in ("cls", "seg"):
        raise VislabError(ckpt, "not a vislab checkpoint (no task recorded); name a registry model instead")
    net, meta = load_network(ckpt, task=task)
    recipe = meta.get("recipe")  # the checkpoint's own copy: a file moved out of its run folder keeps it
    return net, task, meta, recipe if isinstance(recipe, dict) else {}


@app.command("export")
def export_cmd(
    ckpt: str = typer.Argument(..., help="Checkpoint or run folder (P1 or P2); several, comma-separated (runs/a,runs/b), export one graph averaging their class probabilities."),
    out_path: Path = typer.Argument(..., help="Output .onnx file."),
    size: Optional[tuple[int, int]] = typer.Option(None, "--size", help="P2 input H W the graph is traced and checked at (default: the recipe's input_hw, else the most common training tile size); a segmenter's graph takes any size when its network allows."),
    opset: int = typer.Option(17, "--opset"),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare ONNX Runtime with PyTorch on random inputs."),
    offsets: bool = typer.Option(True, "--offsets/--no-offsets", help="P2: carry the `seg calibrate` class offsets and evaluation scale (default) or leave them out."),
) -> None:
    """Export a checkpoint's network to ONNX (normalised input, logits out; batch axis dynamic), or an ensemble's as one graph."""
    from vislab.export import export_onnx

    _output(out_path, ".onnx", inputs=_members(ckpt))
    res = export_onnx(ckpt, out_path, size=size, opset=opset, check=check, offsets=offsets)
    c, h, w = res["input_shape"]
    shown = (f"(N, {c}, H, W): any height and width (traced at {w}x{h}, width x height)" if res.get("free_size")
             else f"(N, {c}, {h}, {w})")
    out.print(f"wrote {res['path']} ({res['bytes'] / 1e6:.1f} MB), input {shown}")
    if check:
        within = (f"; within float32 rounding: PyTorch's own float32 result is {res['float32_rounding']:.1e} off its "
                  "float64 one" if "float32_rounding" in res else "")
        out.print(f"onnxruntime vs torch: max |logit diff| {res['max_abs_diff']:.1e} (tolerance {res['atol']:.3g}{within})")


@app.command("report")
def report_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders (P1 and/or P2), or folders with run folders up to two levels inside."),
    out_file: Path = typer.Option(Path("report.html"), "--out", help="Output file."),
    fmt: Optional[str] = typer.Option(None, "--format",
                                      help="html (figures embedded) | md (figures as PNGs in <page>_figures/); default: by the --out name."),
    title: str = typer.Option("vislab report", "--title"),
    shot: Optional[Path] = typer.Option(None, "--screenshot", help="Also render the HTML page to this PNG (headless Chromium)."),
) -> None:
    """The homework's figures and tables from run folders, as one self-contained page."""
    from vislab.report import PAGE_SUFFIXES, TSNE_FIGURE, build_report, page_format, screenshot

    _output(out_file, *PAGE_SUFFIXES)
    if shot is not None:
        from vislab.runfolders import find_runs

        try:
            found = find_runs(runs)
        except VislabError:  # said by the report itself, after the checks of its options
            found = []
        _output(shot, ".png", data=_run_data(found),
                protected=[(Path(r) / TSNE_FIGURE, "is a run's t-SNE figure, which the report shows") for r in found])
    fmt = page_format(out_file, fmt)
    if shot is not None and fmt != "html":
        raise VislabError("--screenshot", "renders the HTML page; drop it, or write the page as HTML (--out NAME.html)")
    page = build_report(runs, out_file, fmt=fmt, title=title)
    out.print(f"wrote {page}")
    if shot is not None:
        out.print(f"wrote {screenshot(page, shot)}")


@app.command("demo")
def demo_cmd(
    data: Optional[Path] = typer.Option(None, "--data", help="hw1_data folder (default $VISLAB_DATA, ./hw1_data, ../shared/data/hw1_data)."),
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder (must not hold a previous run)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs instead of the recipe's time budget."),
) -> None:
    """The end-to-end P1 job in about ten minutes on a CPU: fine-tune EfficientNet-Lite0 from the
    offline ImageNet weights (recipe cls-demo, epochs set by its time budget), evaluate val_50,
    write the predictions CSV and the t-SNE figure into the run folder."""
    from vislab.paths import data_root
    from vislab.pipelines.demo import demo

    res = demo(data_root(data), out_dir, epochs=epochs, command=_command_line())
    model = res["recipe"]["model"]
    out.print(f"val_50 accuracy:  {res['val_accuracy']:.4f}  ({res['predictions']['images']} images, predictions in "
              f"{res['predictions']['file']})")
    epochs = res.get("epochs_trained", res["recipe"]["epochs"])  # the recipe.yaml keeps the budget's first plan
    out.print(f"training:         {res['train_seconds'] / 60:.1f} min, {epochs} epoch{'s' if epochs != 1 else ''} of {model} at "
              f"{res['recipe']['image_size']} px")
    out.print(f"t-SNE figure:     {res['tsne']}")
    out.print(f"architecture:     vislab summary {model} --num-classes {res['num_classes']} --input 3 {res['recipe']['image_size']} "
              f"{res['recipe']['image_size']}")


@app.command("runs")
def runs_cmd(
    folders: Optional[list[Path]] = typer.Argument(None, help="Run folders, or folders holding them (up to two levels down; default: runs)."),
    sort: str = typer.Option("time", "--sort", help="time (last write, newest last) | held-out | val (best first)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the rows to this JSON file."),
) -> None:
    """The run folders, a line each: task, model, epochs, minutes trained, held-out and validation
    scores, last write, and whether the run finished (or how to go on)."""
    from vislab.pipelines.runs import list_runs, rows_json, table_lines

    _output(json_out, ".json")
    rows = list_runs(folders or [Path("runs")], sort=sort)
    for line in table_lines(rows):  # plain lines, whole at any width (a table folds the paths a reader copies)
        out.print(line, markup=False, soft_wrap=True)
    _write_json({"runs": rows_json(rows)}, json_out)


# --- the decode cache ------------------------------------------------------------------------

cache_app = typer.Typer(help="The cache of decoded images and tiles, mask statistics and ONNX graphs "
                        "($VISLAB_CACHE, default ~/.cache/vislab): list it, or free its space.", no_args_is_help=True,
                        cls=OnceGroup)
app.add_typer(cache_app, name="cache")


@cache_app.command("list")
def cache_list_cmd() -> None:
    """Every entry of the cache: what it holds, made from which folder, its size and last use."""
    import time

    from vislab.data.cache import cache_dir, cache_entries, megabytes
    from vislab.log import counted

    entries = cache_entries()
    if not entries:
        out.print(f"{cache_dir()}: empty")
        return
    for e in entries:  # plain lines, whole at any width (a table folds the paths a reader copies)
        items = "" if e.items is None else f", {e.items} items"
        out.print(f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(e.last_used))}  {megabytes(e.bytes):>9}  "
                  f"{e.describe()}{items}, made from {e.source or '(not recorded)'}", markup=False, soft_wrap=True)
    out.print(f"{cache_dir()}: {counted(len(entries), 'entry', 'entries')}, {megabytes(sum(e.bytes for e in entries))}")


@cache_app.command("clear")
def cache_clear_cmd(
    unused_days: Optional[float] = typer.Option(None, "--unused-days", help="Only entries not used for this many days."),
    source: Optional[Path] = typer.Option(None, "--source", help="Only entries made from this folder (or one inside it: a run folder takes its checkpoints' ONNX graphs)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go, delete nothing."),
) -> None:
    """Delete cache entries (all, or those the options choose); a later run decodes again."""
    from vislab.data.cache import cache_dir, cache_entries, megabytes, remove_entries, select_entries
    from vislab.log import counted, info

    if unused_days is not None and not unused_days >= 0:  # nan too
        raise VislabError("--unused-days", f"must be >= 0, got {unused_days:g}")
    entries = cache_entries()
    from_source = select_entries(entries, source=source)
    chosen = select_entries(from_source, unused_days=unused_days)
    if source is not None and not from_source:
        info(f"--source {source}: no entry records it as its folder (entries made before vislab recorded sources "
             "name none); `vislab cache list` shows what each was made from")
    size = megabytes(sum(e.bytes for e in chosen))
    of = f"{len(chosen)} of {counted(len(entries), 'entry', 'entries')}"
    if dry_run:
        for e in chosen:
            out.print(f"would delete {e.name} ({e.describe()}, {megabytes(e.bytes)})", markup=False)
        out.print(f"{cache_dir()}: would free {size} ({of})")
        return
    freed, kept = remove_entries(chosen)
    out.print(f"{cache_dir()}: freed {megabytes(freed)} ({of} deleted)")
    if kept:
        raise VislabError(kept[0][0], f"could not be deleted ({kept[0][1]}); {counted(len(kept), 'file')} of the "
                                      "chosen entries are left")

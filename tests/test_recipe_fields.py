"""Recipe fields a run would ignore are refused with one line; YAML spellings are accepted."""

from __future__ import annotations

import pytest
import yaml

from vislab.config import TASK_ONLY, FieldError, Recipe, check_applies, load_recipe, load_recipe_written


@pytest.mark.parametrize("name,value", [("crop_size", 64), ("crop_area", [0.5, 1.0]), ("infer_scale", 0.5),
                                        ("input_hw", [64, 64]), ("rot90", False), ("loss", "dice"),
                                        ("class_weights", "inverse-sqrt-frequency"), ("calibrate", True),
                                        ("snapshot", ["0010"])])
def test_seg_fields_in_a_cls_recipe_are_refused(name, value, tmp_path):
    assert name in TASK_ONLY["seg"]
    r = load_recipe(str(_yaml(tmp_path, task="cls", **{name: value})))
    with pytest.raises(FieldError, match=f"{name} applies to seg training only; a cls run would ignore it"):
        check_applies(r)


@pytest.mark.parametrize("name,value", [("image_size", 64), ("pad", 0), ("mixup", 0.2), ("cutmix", 1.0),
                                        ("label_smoothing", 0.1)])
def test_cls_fields_in_a_seg_recipe_are_refused(name, value, tmp_path):
    r = load_recipe(str(_yaml(tmp_path, task="seg", **{name: value})))
    with pytest.raises(FieldError, match=f"{name} applies to cls training only"):
        check_applies(r)


def test_defaults_and_shipped_recipes_pass():
    check_applies(Recipe(task="cls"))
    check_applies(Recipe(task="seg"))
    check_applies(load_recipe("seg-cpu"))  # crop_area, calibrate, snapshot: seg fields in a seg recipe
    check_applies(load_recipe("cls-best"))


def test_settings_that_would_do_nothing(tmp_path):
    with pytest.raises(FieldError, match="class_weights weight the ce term of the loss, and loss 'dice' has none"):
        check_applies(Recipe(task="seg", loss="dice", class_weights="inverse-sqrt-frequency"))
    check_applies(Recipe(task="seg", loss="ce+dice", class_weights="inverse-sqrt-frequency"))
    with pytest.raises(FieldError, match="calibrate fits class offsets on the held-out split, and holdout is 0"):
        check_applies(Recipe(task="seg", calibrate=True, holdout=0.0))
    with pytest.raises(FieldError, match="split_seed seeds the held-out split, and holdout is 0"):
        check_applies(Recipe(task="cls", split_seed=0, holdout=0.0))
    check_applies(Recipe(task="cls", split_seed=0, holdout=0.1))
    with pytest.raises(FieldError, match="warmup_epochs 2.5 is longer than the run's 2 epochs"):
        check_applies(Recipe(task="cls", epochs=2, warmup_epochs=2.5))
    check_applies(Recipe(task="cls", epochs=2, warmup_epochs=2.0))  # reaches lr at the last step
    check_applies(Recipe(task="cls", epochs=2, warmup_epochs=2.5, budget_minutes=5))  # the budget plans the epochs
    with pytest.raises(FieldError, match="distill is 0, so the teacher's soft targets would be computed and given no"):
        check_applies(Recipe(task="cls", teacher=("runs/t",), distill=0.0))
    check_applies(Recipe(task="cls", teacher=("runs/t",), distill=0.5))


def test_fields_written_at_their_default_are_held_to_applying(tmp_path):
    """A recipe file that writes a field at its default value (rot90: true in a cls recipe,
    momentum: 0.9 beside adamw, distill: 0.5 without a teacher) expected it to act: refused like
    any other value. A run's saved recipe.yaml, which lists every field, is not."""
    cases = [({"task": "cls", "rot90": True}, "rot90 applies to seg training only; a cls run would ignore it"),
             ({"task": "seg", "mixup": 0.0}, "mixup applies to cls training only"),
             ({"task": "cls", "optimizer": "adamw", "momentum": 0.9}, "momentum is SGD's; adamw has its own betas"),
             ({"task": "seg", "distill": 0.5}, "distill weights the teacher's soft targets, and there is no teacher")]
    for fields, problem in cases:
        path = str(_yaml(tmp_path, **fields))
        assert load_recipe(path) == load_recipe(path).with_overrides(**{k: None for k in fields})
        check_applies(load_recipe(path))  # every value is the default: nothing to see without the file's keys
        with pytest.raises(FieldError, match=problem):
            check_applies(*load_recipe_written(path))
    saved = Recipe(task="cls", optimizer="adamw").to_dict()  # as a run folder keeps it
    older = {k: v for k, v in saved.items() if k not in ("split_seed", "teacher", "distill")}  # an older version's
    for listing in (saved, older):
        path = str(_yaml(tmp_path, **listing))
        assert load_recipe_written(path)[1] == frozenset()
        check_applies(*load_recipe_written(path))
    assert load_recipe_written(str(_yaml(tmp_path, task="cls", image_size=None)))[1] == {"task"}  # null: not set


def test_the_cli_names_the_recipe_file(cli, color_classes, tmp_path):
    path = _yaml(tmp_path, task="cls", model="cifar_resnet20", crop_size=16)
    res = cli("cls", "train", color_classes, "--recipe", path, "--out", tmp_path / "run")
    assert res.code == 2 and f"{path}: field crop_size applies to seg training only" in res.err
    assert not (tmp_path / "run").exists()
    path = _yaml(tmp_path, task="cls", model="cifar_resnet20", rot90=True)  # the default value, written
    res = cli("cls", "train", color_classes, "--recipe", path, "--out", tmp_path / "run")
    assert res.code == 2 and f"{path}: field rot90 applies to seg training only" in " ".join(res.err.split())
    assert not (tmp_path / "run").exists()


def test_a_list_field_that_names_an_item_twice_is_refused_with_the_file(cli, color_classes, tmp_path):
    """freeze: [features.0, features.0] is a slip (the second does nothing): refused with the file."""
    path = _yaml(tmp_path, task="cls", model="cifar_resnet20", freeze=["layer1", "layer2", "layer1"])
    res = cli("cls", "train", color_classes, "--recipe", path, "--out", tmp_path / "run")
    assert res.code == 2
    assert f"{path}: recipe field freeze must be a list that names each once, got ('layer1', 'layer2', 'layer1')" in res.err
    assert not (tmp_path / "run").exists()


def test_yaml_devices_as_a_number(tmp_path):
    from vislab.engine.trainer import _devices

    r = load_recipe(str(_yaml(tmp_path, task="cls", devices=2)))
    assert r.devices == "2" and _devices(r.devices) == 2


def _yaml(tmp_path, **fields):
    p = tmp_path / f"r{len(list(tmp_path.glob('r*.yaml')))}.yaml"
    p.write_text(yaml.safe_dump(fields))
    return p


def test_a_holdout_that_holds_out_nothing_is_said_and_run_without(cli, tmp_path):
    """3 images per class at holdout 0.1: round(0.3) = 0 per class. The run says so, records it,
    and keeps the last epoch (no best.ckpt, no monitor that never gets its metric)."""
    from conftest import write_color_classes

    few = write_color_classes(tmp_path / "few", per_class=3)
    path = _yaml(tmp_path, task="cls", model="simple_cnn", epochs=1, batch_size=4, lr=0.05, holdout=0.1)
    res = cli("cls", "train", few, "--recipe", path, "--out", tmp_path / "run")
    assert res.code == 0, res.err
    line = "holdout 0.1 -> 0: 9 images, 0.1 of each class rounded leave none to hold out; the last epoch is the model"
    assert line in " ".join(res.err.split())  # the console wraps long lines
    assert line in (tmp_path / "run" / "changes.txt").read_text()
    assert yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())["holdout"] == 0.0
    assert (tmp_path / "run" / "last.ckpt").is_file() and not (tmp_path / "run" / "best.ckpt").exists()
    assert "could not find the monitored key" not in res.err
    # a split seed, with no split left to seed, goes too, said in the same line
    res = cli("cls", "train", few, "--recipe", path, "--split-seed", "3", "--out", tmp_path / "run2")
    assert res.code == 0, res.err
    assert line + " (and split_seed 3 is dropped: no split to seed)" in " ".join(res.err.split())
    assert yaml.safe_load((tmp_path / "run2" / "recipe.yaml").read_text())["split_seed"] is None


def test_a_teacher_string_in_a_recipe_is_a_list_of_runs_and_holdout_0_drops_a_split_seed(tmp_path):
    """``teacher: runs/a`` in YAML is one run (not its characters), ``runs/a, runs/b`` two; and
    ``--holdout 0`` over a recipe with a split seed drops it, said, instead of refusing the recipe."""
    from vislab.config import recipe_from_dict
    from vislab.pipelines.settings import run_recipe

    assert recipe_from_dict({"task": "cls", "teacher": "runs/a"}).teacher == ("runs/a",)
    assert recipe_from_dict({"task": "cls", "teacher": "runs/a, runs/b"}).teacher == ("runs/a", "runs/b")
    assert recipe_from_dict({"task": "seg", "snapshot": "0010,0097"}).snapshot == ("0010", "0097")  # not characters
    assert recipe_from_dict({"task": "seg", "snapshot": ""}).snapshot == ()
    path = _yaml(tmp_path, task="cls", model="simple_cnn", holdout=0.1, split_seed=4)
    r, notes = run_recipe(str(path), tmp_path / "run", resume=False, overrides={"holdout": 0.0})
    assert r.holdout == 0.0 and r.split_seed is None
    assert notes == ["holdout 0 drops the recipe's split_seed (4): no split to seed"]
    r, notes = run_recipe(str(path), tmp_path / "run", resume=False, overrides={"holdout": 0.2})
    assert r.split_seed == 4 and notes == []


def test_settings_that_run_as_told_but_likely_not_as_meant_are_said(tmp_path):
    """Frozen layers without pretrained weights, a crop area without a crop, and a recipe's
    normalisation kept for a model pretrained with another: each a line for changes.txt."""
    from vislab.config import recipe_from_dict
    from vislab.models import get_entry
    from vislab.pipelines.settings import run_recipe

    path = _yaml(tmp_path, task="cls", model="cifar_resnet20", freeze="layer1")  # one submodule, as a string
    r, notes = run_recipe(str(path), tmp_path / "run", resume=False, overrides={})
    assert r.freeze == ("layer1",)
    assert notes == ["warning: freeze keeps layer1 at their random initial weights (no pretrained weights to keep)"]
    assert run_recipe("cls-cpu", tmp_path / "run", resume=False, overrides={})[1] == []  # freeze over ImageNet weights
    r, notes = run_recipe("seg-cpu", tmp_path / "run", resume=False, overrides={"crop_size": 0})
    assert r.crop_size is None and notes == ["crop_area [0.5, 1.0] is unused: crop_size is 0, so training sees whole tiles"]
    # seg-cpu's [-1, 1] scaling is its Lite1's; a ResNet-18 pretrained on ImageNet statistics is told
    imagenet = [round(v, 4) for v in get_entry("smp:fpn:resnet18").pretrained_norm[0]]
    assert imagenet == [0.485, 0.456, 0.406]
    _, notes = run_recipe("seg-cpu", tmp_path / "run", resume=False, overrides={"model": "smp:fpn:resnet18"})
    assert len(notes) == 1 and notes[0].startswith("warning: mean [0.5, 0.5, 0.5] and std [0.5, 0.5, 0.5] stay the "
                                                   "recipe's, while smp:fpn:resnet18's pretrained weights were "
                                                   f"trained with mean {imagenet}")
    assert run_recipe("seg-cpu", tmp_path / "run", resume=False,
                      overrides={"model": "smp:fpn:tu-tf_efficientnet_lite1"})[1] == []  # its own scaling
    # crop_area's range, and a scalar where a list belongs, name the field and the file
    for bad in ([0.6, 0.3], [0.0, 1.0], [0.5, 1.5], [0.5]):
        with pytest.raises(FieldError, match="crop_area must be two area fractions lo, hi with 0 < lo <= hi <= 1"):
            recipe_from_dict({"task": "seg", "crop_area": bad})
    assert recipe_from_dict({"task": "seg", "crop_area": [0.3, 0.3]}).crop_area == (0.3, 0.3)
    path = _yaml(tmp_path, task="seg", crop_area=3)
    with pytest.raises(FieldError, match="recipe field crop_area must be a list, got 3") as err:
        load_recipe(str(path))
    assert str(path) in str(err.value)


def test_rot90_says_when_tiles_cannot_turn():
    """Quarter turns need square batches: without crop_size, oblong tiles are never turned."""
    import torch

    from vislab.pipelines.segmentation import _unturned_note

    sizes = torch.tensor([[64, 64], [64, 48], [32, 32]])
    assert _unturned_note(Recipe(task="seg"), sizes) == [
        "rot90 turns only square batches: 1 of 3 tiles are not square, so batches that hold one are never turned; "
        "set crop_size for square crops that turn"]
    assert _unturned_note(Recipe(task="seg", crop_size=32), sizes) == []  # square crops turn
    assert _unturned_note(Recipe(task="seg", rot90=False), sizes) == []
    assert _unturned_note(Recipe(task="seg"), torch.tensor([[64, 64], [32, 32]])) == []


def test_a_recipes_normalisation_against_the_weights_it_starts_from_is_warned(tmp_path):
    """A recipe's mean/std kept for weights that learnt from other inputs runs as told, with a
    warning naming both: ImageNet weights (the model's registered statistics) and a vislab run's
    checkpoint (the statistics it records); weights that learnt from the same, or that record
    none (a plain state_dict), give no line."""
    import torch

    from vislab.config import recipe_from_dict
    from vislab.models import get_entry
    from vislab.pipelines.settings import unused_setting_notes

    base = {"task": "cls", "model": "efficientnet_lite0", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}

    def notes(weights: str) -> list[str]:
        r = recipe_from_dict({**base, "weights": weights})
        return [n for n in unused_setting_notes(r, {"weights": weights}, lambda f: f) if "stay the recipe's" in n]

    mean, std = get_entry("efficientnet_lite0").pretrained_norm
    (said,) = notes("imagenet")
    assert f"efficientnet_lite0's pretrained weights were trained with mean {[round(float(v), 4) for v in mean]}" in said
    run = tmp_path / "run.ckpt"
    torch.save({"state_dict": {}, "vislab": {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}}, run)
    (said,) = notes(str(run))
    assert said == (f"warning: mean [0.5, 0.5, 0.5] and std [0.25, 0.25, 0.25] stay the recipe's, while the run it "
                    f"starts from ({run}) was trained with mean [0.1, 0.2, 0.3] and std [0.4, 0.5, 0.6]; set mean/std "
                    "in a recipe file to change them")
    torch.save({"state_dict": {}, "vislab": {"mean": base["mean"], "std": base["std"]}}, run)
    assert notes(str(run)) == []
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    assert notes(str(tmp_path / "plain.pt")) == []


def test_a_batch_changed_on_the_command_line_keeps_the_recipes_lr_and_names_the_rule(tmp_path):
    """--batch-size 32 on cls-best (SGD, lr 0.08 for 128): the lr is kept, and one line gives the
    linear rule's 0.02; AdamW's rule is the square root; no line when --lr is given too, when the
    batch is the recipe's, or when the recipe sets no lr (the rule applies by itself)."""
    from vislab.config import load_recipe
    from vislab.pipelines.settings import run_recipe

    def notes(recipe: str, **flags) -> tuple[float | None, list[str]]:
        overrides = {"batch_size": None, "lr": None, **flags}
        r, lines = run_recipe(recipe, tmp_path / "run", resume=False, overrides=overrides,
                              flag=lambda f: "--" + f.replace("_", "-"))
        return r.lr, [n for n in lines if "stays the recipe's" in n]

    best = load_recipe("cls-best")
    assert (best.optimizer, best.lr, best.batch_size) == ("sgd", 0.08, 128)  # the numbers the lines below use
    assert notes("cls-best", batch_size=32) == (0.08, [
        "lr 0.08 stays the recipe's, set for a batch of 128; for --batch-size 32 the sgd rule (engine/optim.py "
        "LR_RULES) gives 0.02: add --lr 0.02 to use it"])
    seg = load_recipe("seg-cpu")
    assert seg.optimizer == "adamw"
    lr, (line,) = notes("seg-cpu", batch_size=seg.batch_size * 4)
    assert lr == seg.lr and f"gives {float(f'{seg.lr * 2:.3g}'):g}: add --lr" in line
    assert notes("cls-best", batch_size=32, lr=0.02) == (0.02, [])
    assert notes("cls-best", batch_size=128) == (0.08, [])
    assert load_recipe("cls-default").lr is None and notes("cls-default", batch_size=32)[1] == []


def test_lightnings_older_precision_names_are_read_as_the_ones_it_asks_for():
    """Lightning takes precision 16 and bf16 with a warning to write 16-mixed and bf16-mixed (the
    same setting): a recipe or flag with the old names holds the new ones; others stay as given."""
    from vislab.config import recipe_from_dict

    base = {"task": "cls", "model": "simple_cnn"}
    assert recipe_from_dict({**base, "precision": "bf16"}).precision == "bf16-mixed"
    assert recipe_from_dict({**base, "precision": 16}).precision == "16-mixed"  # YAML's integer
    assert recipe_from_dict({**base, "precision": 32}).precision == "32"
    assert recipe_from_dict(base).with_overrides(precision="bf16").precision == "bf16-mixed"
    assert recipe_from_dict({**base, "precision": "bf16-true"}).precision == "bf16-true"


def test_field_types_and_yaml_exponents(tmp_path):
    """`model: 5` failed later as an internal error; YAML 1.1 reads 1e-6 (no dot) as text, which only
    some number fields took back as numbers (max_minutes: 1e-6 was 'must be > 0, got '1e-6'')."""
    from vislab.errors import VislabError

    f = tmp_path / "r.yaml"
    for text, said in (("model: 5", "recipe field model must be text, got 5"),
                       ("weights: 5", "recipe field weights must be text, got 5"),
                       ("notes: 5", "recipe field notes must be text, got 5"),
                       ("label_smoothing: abc", "recipe field label_smoothing must be a number, got 'abc'")):
        f.write_text(f"task: cls\n{text}\n")
        with pytest.raises(VislabError) as err:
            load_recipe(str(f))
        assert str(err.value) == f"{f}: {said}"
    f.write_text("task: cls\nmax_minutes: 1e-6\nlabel_smoothing: 1e-1\nmomentum: 9e-1\nholdout: 2e-1\n")
    assert isinstance(yaml.safe_load(f.read_text())["max_minutes"], str)  # what the fields are given
    r = load_recipe(str(f))
    assert (r.max_minutes, r.label_smoothing, r.momentum, r.holdout) == (1e-6, 0.1, 0.9, 0.2)

"""Mixup, cutmix and the weight EMA: checked against hand-computed values and soft-label CE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from vislab.config import Recipe
from vislab.data.mixing import mix_batch
from vislab.engine.ema import WeightEMA
from vislab.errors import VislabError


def _constant_images(n: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i; its label is i."""
    y = torch.arange(n)
    return y.float().view(n, 1, 1, 1).expand(n, 3, size, size).clone(), y


def test_mixup_blends_each_image_with_the_one_its_second_label_names():
    x, y = _constant_images(10)
    m = mix_batch(x, y, mixup=0.4, cutmix=0.0, seed=(1, 2, 3))
    assert 0.0 < m.lam < 1.0
    assert torch.equal(m.y_a, y) and sorted(m.y_b.tolist()) == y.tolist()  # a permutation
    expected = (m.lam * y + (1 - m.lam) * m.y_b).float().view(-1, 1, 1, 1).expand_as(x)
    assert torch.allclose(m.x, expected, atol=1e-6)
    again = mix_batch(x, y, mixup=0.4, cutmix=0.0, seed=(1, 2, 3))
    assert torch.equal(again.x, m.x) and again.lam == m.lam
    other = mix_batch(x, y, mixup=0.4, cutmix=0.0, seed=(1, 2, 4))
    assert other.lam != m.lam


def test_cutmix_pastes_one_rectangle_whose_area_is_one_minus_lambda():
    x, y = _constant_images(6, size=16)
    checked = 0
    for seed in range(20):
        m = mix_batch(x, y, mixup=0.0, cutmix=1.0, seed=seed)
        moved = (m.y_b != y).nonzero().flatten()
        if not len(moved):
            continue
        region = m.x[moved[0], 0] != moved[0]  # pixels of image i that came from elsewhere
        for i in moved:
            assert torch.equal(m.x[i, 0] != i, region)  # the same box in every image
            assert torch.all(m.x[i, :, region] == m.y_b[i])  # holding the partner's pixels
        rows, cols = region.any(1).nonzero().flatten(), region.any(0).nonzero().flatten()
        assert region.sum() == len(rows) * len(cols)  # a filled rectangle
        if len(rows):
            assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
        assert m.lam == pytest.approx(1 - region.float().mean().item(), abs=1e-12)
        checked += 1
    assert checked >= 15


def test_mixed_loss_is_cross_entropy_of_the_blended_smoothed_labels():
    torch.manual_seed(0)
    x, y = _constant_images(8)
    logits = torch.randn(8, 8)
    for eps in (0.0, 0.1):
        m = mix_batch(x, y, mixup=0.3, cutmix=0.0, seed=5)
        soft = m.lam * F.one_hot(m.y_a, 8).float() + (1 - m.lam) * F.one_hot(m.y_b, 8).float()
        soft = soft * (1 - eps) + eps / 8
        by_hand = -(soft * logits.log_softmax(1)).sum(1).mean()
        assert torch.allclose(m.loss(logits, label_smoothing=eps), by_hand, atol=1e-6)
        assert torch.equal(m.y_major, m.y_a if m.lam >= 0.5 else m.y_b)


def test_both_methods_are_drawn_and_off_means_untouched():
    x, y = _constant_images(6)
    kinds = set()
    for seed in range(30):
        m = mix_batch(x, y, mixup=0.5, cutmix=1.0, seed=seed)
        values = set(m.x.unique().tolist())
        kinds.add("cutmix" if values <= set(range(6)) else "mixup")
    assert kinds == {"cutmix", "mixup"}
    plain = mix_batch(x, y, mixup=0.0, cutmix=0.0, seed=0)
    assert plain.x is x and plain.lam == 1.0
    logits = torch.randn(6, 6)
    assert torch.equal(plain.loss(logits), F.cross_entropy(logits, y))


def test_ema_follows_the_warmed_up_recurrence_and_copies_integer_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    ema = WeightEMA(net, decay=0.5)
    value = net[0].weight.detach().clone()
    for step, target in enumerate([1.0, -2.0, 4.0, 0.5]):
        d = min(0.5, (1 + step) / (10 + step))
        assert ema.current_decay() == pytest.approx(d)
        with torch.no_grad():
            net[0].weight.fill_(target)
            net[1].num_batches_tracked.fill_(7 + step)
        ema.update(net)
        value = d * value + (1 - d) * target
        assert torch.allclose(ema.module[0].weight, value, atol=1e-6)
        assert int(ema.module[1].num_batches_tracked) == 7 + step
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_recipe_refuses_bad_regularisation_values():
    with pytest.raises(VislabError, match="ema must be in"):
        Recipe(ema=1.0)
    with pytest.raises(VislabError, match="mixup must be >= 0"):
        Recipe(mixup=-0.1)
    with pytest.raises(VislabError, match="recipe field cutmix must be a number, got 'lots'"):
        from vislab.config import recipe_from_dict
        recipe_from_dict({"cutmix": "lots"})
    for key in ("lr", "weight_decay", "mixup", "erasing", "budget_minutes"):  # YAML `true`: not a 1.0
        with pytest.raises(VislabError, match=f"recipe field {key} must be a number, got True"):
            recipe_from_dict({key: True})


def test_training_with_ema_saves_and_predicts_with_the_average(cli, color_classes, tmp_path):
    from vislab.models.checkpoints import load_network

    r = {"task": "cls", "model": "cifar_resnet20", "epochs": 2, "batch_size": 16, "lr": 0.05,
         "holdout": 0.2, "seed": 0, "mixup": 0.2, "cutmix": 1.0, "ema": 0.9}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    res = cli("cls", "train", color_classes, "--recipe", tmp_path / "r.yaml", "--out", tmp_path / "run",
              "--val-dir", color_classes)
    assert res.code == 0, res.err
    ckpt = torch.load(tmp_path / "run" / "last.ckpt", weights_only=True)
    sd = ckpt["state_dict"]
    assert int(sd["ema.updates"]) == ckpt["global_step"] == 2 * (96 // 16)
    model, _ = load_network(tmp_path / "run" / "last.ckpt", task="cls")
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd["ema.module." + k]), k
    assert not torch.equal(sd["ema.module.fc.weight"], sd["net.fc.weight"])
    # --weights RUN/last.ckpt (fine-tuning from the run) starts from the same average
    from vislab.models.weights import read_state_dict

    start = read_state_dict(tmp_path / "run" / "last.ckpt")
    assert start.keys() == model.state_dict().keys()
    assert all(torch.equal(v, sd["ema.module." + k]) for k, v in start.items())


def test_compiled_training_matches_eager_and_keeps_checkpoint_names(cli, color_classes, tmp_path, monkeypatch):
    """``compile: true`` compiles the network in place (here with the aot_eager backend, which
    traces forward and backward like inductor but skips code generation, to stay fast)."""
    original = torch.nn.Module.compile
    calls = []

    def compile_aot_eager(self, *args, **kwargs):
        calls.append(type(self).__name__)
        return original(self, backend="aot_eager")

    monkeypatch.setattr(torch.nn.Module, "compile", compile_aot_eager)
    runs = {}
    for flag in (False, True):
        r = {"task": "cls", "model": "simple_cnn", "epochs": 1, "batch_size": 16, "lr": 0.05,
             "holdout": 0.0, "seed": 0, "compile": flag}
        (tmp_path / f"{flag}.yaml").write_text(yaml.safe_dump(r))
        res = cli("cls", "train", color_classes, "--recipe", tmp_path / f"{flag}.yaml", "--out", tmp_path / str(flag))
        assert res.code == 0, res.err
        runs[flag] = torch.load(tmp_path / str(flag) / "last.ckpt", weights_only=True)["state_dict"]
        assert not (tmp_path / str(flag) / "best.ckpt").exists()  # no held-out split: nothing to select
    assert len(calls) == 1  # the compiled run compiled its network once; the eager run did not
    assert runs[True].keys() == runs[False].keys()
    for k, v in runs[False].items():
        assert torch.allclose(runs[True][k].float(), v.float(), atol=1e-5), k

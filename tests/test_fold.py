"""BatchNorm folded into the convolution before it: the same outputs, only where it is exact, the original untouched."""

import copy

import pytest
import torch
from helpers import TINY

from featcache.backbones import Backbone, BackboneSpec, Preprocessing, build_backbone
from featcache.fold import TOLERANCE, fold_batchnorm

PREP = Preprocessing(32, 36, "bilinear", (0.5,) * 3, (0.5,) * 3)


def with_running_stats(model: torch.nn.Module) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (fresh ones are the identity)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def backbone_of(model, layers=("pooled",)) -> Backbone:
    return Backbone(BackboneSpec("test", type(model).__name__), model, model, list(layers), None, PREP)


def probe() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def assert_same_outputs(a: Backbone, b: Backbone) -> None:
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ra, rb = a(x), b(x)
    for layer in ra:
        torch.testing.assert_close(rb[layer], ra[layer], rtol=0, atol=TOLERANCE * float(ra[layer].abs().max()))


@pytest.mark.parametrize("layers", [["pooled"], ["blocks.1", "pooled"]])
def test_timm_efficientnet_folds_and_computes_the_same(tiny_weights, layers):
    bb = build_backbone(TINY, weights=str(tiny_weights), layers=layers, image_size=32)
    with_running_stats(bb.model)
    before = copy.deepcopy(bb.model.state_dict())
    folded, n = fold_batchnorm(bb, probe())
    assert n > 0 and folded is not bb
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.model.modules())
    assert_same_outputs(bb, folded)
    after = bb.model.state_dict()  # the original keeps its BatchNorm and its weights
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_torchvision_resnet_folds_every_pair():
    import torchvision

    model = with_running_stats(torchvision.models.resnet18(num_classes=4))
    model.fc = torch.nn.Identity()
    bb = backbone_of(model)
    folded, n = fold_batchnorm(bb, probe())
    assert n == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 20
    assert_same_outputs(bb, folded)


class NormAfterActivation(torch.nn.Module):
    """conv and bn registered side by side, but the BatchNorm reads the activation, not the convolution."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)

    def forward(self, x):
        return self.bn(torch.relu(self.conv(x))).mean(dim=(2, 3))


class ConvOutputUsedTwice(torch.nn.Module):
    """The BatchNorm reads the convolution's output, but so does a residual sum: folding would change it."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return (self.bn(y) + y).mean(dim=(2, 3))


class SmallSecondReader(torch.nn.Module):
    """A second reader of the convolution's output whose feature is small next to the others (a few % of the
    largest): hooks cannot see it, a check against the layer's largest value would miss it, the per-feature
    check does not."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        big = self.bn(y).mean(dim=(2, 3)) * 100
        return torch.cat([big, y.mean(dim=(2, 3))[:, :1]], dim=1)


class SharedConv(torch.nn.Module):
    """One convolution called twice, its BatchNorm only after the first call."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)

    def forward(self, x):
        return self.conv(self.bn(self.conv(x))).mean(dim=(2, 3))


@pytest.mark.parametrize("cls", [NormAfterActivation, ConvOutputUsedTwice, SmallSecondReader, SharedConv])
def test_pairs_that_are_not_one_in_the_data_path_stay_as_they_are(cls):
    bb = backbone_of(with_running_stats(cls()))
    folded, n = fold_batchnorm(bb, probe())
    assert n == 0 and folded is bb


def test_a_model_in_training_mode_or_without_pairs_is_left_alone():
    import torchvision

    training = backbone_of(with_running_stats(torchvision.models.resnet18()).train())
    assert fold_batchnorm(training, probe()) == (training, 0)  # a training model's BN is not an affine map
    plain = backbone_of(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()).eval())
    assert fold_batchnorm(plain, probe()) == (plain, 0)


def test_a_batchnorm_in_training_mode_anywhere_leaves_the_model_alone():
    import torchvision

    model = with_running_stats(torchvision.models.resnet18())
    model.layer2[0].bn1.train()
    before = model.layer2[0].bn1.running_mean.clone()
    bb = backbone_of(model)
    assert fold_batchnorm(bb, probe()) == (bb, 0)
    assert torch.equal(model.layer2[0].bn1.running_mean, before)  # the probe did not update its statistics


def test_for_inference_is_made_once_and_again_when_the_weights_change(tiny_weights):
    bb = build_backbone(TINY, weights=str(tiny_weights), image_size=32)
    first, n = bb.for_inference()
    assert bb.for_inference()[0] is first and n > 0
    with torch.no_grad():
        bb.model.conv_stem.weight.mul_(2.0)
    again, _ = bb.for_inference()
    assert again is not first
    assert_same_outputs(bb, again)

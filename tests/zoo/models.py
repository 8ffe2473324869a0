"""The model zoo of issue #20: architectures users bring, written the way their public code writes
them (in-place ReLU and ``out += identity``, ``inplace=True`` activations, dropout, stochastic
depth), with random weights and tiny widths; plus Hugging Face transformers models built from small
configs (nothing is downloaded), with eager attention (``hf_bert_sdpa``: the library's default SDPA),
each wrapped to return one plain tensor. BatchNorm layers get random running statistics.

``ZOO`` maps a name to an ``Entry``: ``family``, ``make_model()`` (a fresh float model in eval mode,
seeded), ``make_inputs(seed)`` (a tuple of example inputs, batch 2) and ``build()`` which returns
``(model.eval(), example_inputs)``. No model carries QuantStub/DeQuantStub: ``edgequant.prepare``
quantizes a model without stubs whole (README, "What prepare does"), which is what a new user does.
torchvision is not imported (its wheel does not load with this CPU torch): its architectures are
re-written here, following torchvision's code (and ultralytics', timm's, locuslab's, milesial's).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

IMG = 32      # image side for classifiers
BATCH = 2


@dataclass(frozen=True)
class Entry:
    name: str
    family: str
    make_model: Callable[[], nn.Module]
    make_inputs: Callable[[int], tuple]

    def build(self):
        """``(model.eval(), example_inputs)``."""
        return self.make_model().eval(), self.make_inputs(0)


ZOO: dict[str, Entry] = {}


def _image(seed, size=IMG, channels=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(BATCH, channels, size, size, generator=g),)


def _tokens(seed, vocab=100, seq=12, mask=True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (BATCH, seq), generator=g)
    if not mask:
        return (ids,)
    att = torch.ones(BATCH, seq, dtype=torch.long)
    att[1, seq - 3:] = 0          # one padded sentence
    return ids, att


def _sequence(seed, seq=16, features=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(BATCH, seq, features, generator=g),)


def _randomize_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm running statistics and affine parameters of a trained model (a fresh
    BatchNorm is the identity, which would hide what folding does)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                if m.affine:
                    m.weight.copy_(0.6 + 0.8 * torch.rand(n, generator=g))
                    m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return model


def register(name: str, family: str, inputs: Callable[[int], tuple] = _image):
    def deco(fn):
        def make():
            torch.manual_seed(0)
            return _randomize_norms(fn()).eval()
        ZOO[name] = Entry(name, family, make, inputs)
        return fn
    return deco


# ---------------------------------------------------------------- torchvision-style building blocks
class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.misc.Conv2dNormActivation."""

    def __init__(self, cin, cout, kernel_size=3, stride=1, groups=1, norm_layer=nn.BatchNorm2d,
                 activation_layer=nn.ReLU, dilation=1, inplace=True, bias=None):
        padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers = [nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=bias)]
        if norm_layer is not None:
            layers.append(norm_layer(cout))
        if activation_layer is not None:
            layers.append(activation_layer(inplace=inplace))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.misc.SqueezeExcitation."""

    def __init__(self, cin, csq, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(cin, csq, 1)
        self.fc2 = nn.Conv2d(csq, cin, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, x):
        scale = self.avgpool(x)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, x):
        scale = self._scale(x)
        return scale * x


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth (identity in eval)."""

    def __init__(self, p, mode="row"):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        size = [x.shape[0]] + [1] * (x.ndim - 1)
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        return x * noise.div_(1 - self.p)


class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


def _make_divisible(v, divisor=8, min_value=None):
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


# ---------------------------------------------------------------- ResNet
def conv3x3(cin, cout, stride=1, groups=1, dilation=1):
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, groups=groups, bias=False, dilation=dilation)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, block, layers, widths=(8, 16, 32), num_classes=10, dilate_last=False):
        super().__init__()
        self.inplanes, self.dilation = widths[0], 1
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layers = nn.ModuleList()
        for i, (w, n) in enumerate(zip(widths, layers)):
            dilate = dilate_last and i == len(widths) - 1
            self.layers.append(self._make_layer(block, w, n, stride=1 if i == 0 else 2, dilate=dilate))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        downsample = None
        prev = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, prev)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


@register("resnet18_basic", "resnet")
def resnet_basic():
    return ResNet(BasicBlock, [2, 1, 1])


@register("resnet50_bottleneck", "resnet")
def resnet_bottleneck():
    return ResNet(Bottleneck, [1, 1, 1], widths=(8, 8, 16))


# ---------------------------------------------------------------- MobileNet v2 / v3
class InvertedResidualV2(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden, 1, activation_layer=nn.ReLU6))
        layers += [Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden, activation_layer=nn.ReLU6),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=10, dropout=0.2):
        super().__init__()
        setting = [[1, 8, 1, 1], [6, 16, 2, 2], [6, 24, 1, 2]]
        cin, last = 8, 64
        features = [Conv2dNormActivation(3, cin, stride=2, activation_layer=nn.ReLU6)]
        for t, c, n, s in setting:
            for i in range(n):
                features.append(InvertedResidualV2(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(Conv2dNormActivation(cin, last, 1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(last, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


@register("mobilenet_v2", "mobilenet")
def mobilenet_v2():
    return MobileNetV2()


class InvertedResidualV3(nn.Module):
    def __init__(self, cin, kernel, expanded, cout, use_se, activation, stride):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers = []
        if expanded != cin:
            layers.append(Conv2dNormActivation(cin, expanded, 1, activation_layer=act))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel, stride, groups=expanded, activation_layer=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4, 8),
                                            scale_activation=nn.Hardsigmoid))
        layers.append(Conv2dNormActivation(expanded, cout, 1, activation_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class MobileNetV3(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        setting = [(16, 3, 16, 16, True, "RE", 2), (16, 3, 32, 16, False, "RE", 1),
                   (16, 5, 48, 24, True, "HS", 2), (24, 5, 64, 24, True, "HS", 1)]
        layers = [Conv2dNormActivation(3, 16, stride=2, activation_layer=nn.Hardswish)]
        layers += [InvertedResidualV3(*s) for s in setting]
        layers.append(Conv2dNormActivation(24, 96, 1, activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(96, 64), nn.Hardswish(inplace=True), nn.Dropout(p=0.2, inplace=True),
                                        nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


@register("mobilenet_v3_small", "mobilenet")
def mobilenet_v3():
    return MobileNetV3()


# ---------------------------------------------------------------- EfficientNet (MBConv)
class MBConv(nn.Module):
    def __init__(self, cin, cout, expand_ratio, kernel, stride, sd_prob):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expanded = _make_divisible(cin * expand_ratio, 8)
        act = nn.SiLU
        layers = []
        if expanded != cin:
            layers.append(Conv2dNormActivation(cin, expanded, 1, activation_layer=act))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel, stride, groups=expanded, activation_layer=act))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4), activation=partial(nn.SiLU, inplace=True)))
        layers.append(Conv2dNormActivation(expanded, cout, 1, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")

    def forward(self, x):
        result = self.block(x)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += x
        return result


class EfficientNet(nn.Module):
    def __init__(self, num_classes=10, dropout=0.2):
        super().__init__()
        setting = [(1, 3, 1, 8, 8, 1), (6, 3, 2, 8, 16, 2), (6, 5, 2, 16, 24, 1)]
        layers = [Conv2dNormActivation(3, 8, stride=2, activation_layer=nn.SiLU)]
        total = sum(s[-1] for s in setting)
        k = 0
        for e, kern, s, cin, cout, n in setting:
            for i in range(n):
                layers.append(MBConv(cin if i == 0 else cout, cout, e, kern, s if i == 0 else 1, 0.2 * k / total))
                k += 1
        layers.append(Conv2dNormActivation(24, 64, 1, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


@register("efficientnet_b0", "efficientnet")
def efficientnet():
    return EfficientNet()


# ---------------------------------------------------------------- ConvNeXt
class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class CNBlock(nn.Module):
    def __init__(self, dim, layer_scale, sd_prob):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim, bias=True),
            nn.GELU(),
            nn.Linear(4 * dim, dim, bias=True),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")

    def forward(self, x):
        result = self.layer_scale * self.block(x)
        result = self.stochastic_depth(result)
        result += x
        return result


class ConvNeXt(nn.Module):
    def __init__(self, dims=(16, 32), depths=(2, 1), num_classes=10):
        super().__init__()
        # torchvision initializes layer_scale to 1e-6; trained models have O(0.1-1) values
        layers = [Conv2dNormActivation(3, dims[0], 4, 4, norm_layer=partial(LayerNorm2d, eps=1e-6),
                                       activation_layer=None, bias=True)]
        for i, (d, n) in enumerate(zip(dims, depths)):
            layers.append(nn.Sequential(*[CNBlock(d, 0.3, 0.1) for _ in range(n)]))
            if i + 1 < len(dims):
                layers.append(nn.Sequential(LayerNorm2d(d, eps=1e-6), nn.Conv2d(d, dims[i + 1], 2, 2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(dims[-1], eps=1e-6), nn.Flatten(1), nn.Linear(dims[-1], num_classes))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


@register("convnext_tiny", "convnext")
def convnext():
    return ConvNeXt()


# ---------------------------------------------------------------- ShuffleNet v2, RegNet
def channel_shuffle(x, groups: int):
    batchsize, num_channels, height, width = x.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, num_channels, height, width)


class ShuffleInvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        self.stride = stride
        bf = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(inp),
                nn.Conv2d(inp, bf, 1, 1, 0, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else bf, bf, 1, 1, 0, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True),
            nn.Conv2d(bf, bf, 3, stride, 1, groups=bf, bias=False), nn.BatchNorm2d(bf),
            nn.Conv2d(bf, bf, 1, 1, 0, bias=False), nn.BatchNorm2d(bf), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.stage2 = nn.Sequential(ShuffleInvertedResidual(8, 16, 2), ShuffleInvertedResidual(16, 16, 1))
        self.stage3 = nn.Sequential(ShuffleInvertedResidual(16, 32, 2), ShuffleInvertedResidual(32, 32, 1))
        self.conv5 = nn.Sequential(nn.Conv2d(32, 64, 1, 1, 0, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage3(self.stage2(x)))
        x = x.mean([2, 3])  # globalpool
        return self.fc(x)


@register("shufflenet_v2", "shufflenet")
def shufflenet():
    return ShuffleNetV2()


class ResBottleneckBlock(nn.Module):
    """torchvision RegNet's block: 1x1, grouped 3x3, (SE), 1x1; projection shortcut."""

    def __init__(self, cin, cout, stride, group_width, se_ratio):
        super().__init__()
        self.proj = None
        if cin != cout or stride != 1:
            self.proj = Conv2dNormActivation(cin, cout, 1, stride, activation_layer=None)
        layers = [Conv2dNormActivation(cin, cout, 1), Conv2dNormActivation(cout, cout, 3, stride, groups=cout // group_width)]
        if se_ratio:
            layers.append(SqueezeExcitation(cout, int(round(se_ratio * cin))))
        layers.append(Conv2dNormActivation(cout, cout, 1, activation_layer=None))
        self.f = nn.Sequential(*layers)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x):
        if self.proj is not None:
            x = self.proj(x) + self.f(x)
        else:
            x = x + self.f(x)
        return self.activation(x)


class RegNet(nn.Module):
    def __init__(self, se_ratio=None, num_classes=10):
        super().__init__()
        self.stem = Conv2dNormActivation(3, 8, 3, 2)
        self.trunk_output = nn.Sequential(ResBottleneckBlock(8, 16, 2, 8, se_ratio), ResBottleneckBlock(16, 16, 1, 8, se_ratio),
                                          ResBottleneckBlock(16, 32, 2, 8, se_ratio))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.trunk_output(self.stem(x))
        x = self.avgpool(x)
        return self.fc(x.flatten(start_dim=1))


@register("regnet_y", "regnet")
def regnet_y():
    return RegNet(se_ratio=0.25)


# ---------------------------------------------------------------- VGG, DenseNet, SqueezeNet, Inception
class VGG(nn.Module):
    def __init__(self, cfg=(8, "M", 16, "M", 32, 32, "M"), num_classes=10, dropout=0.5):
        super().__init__()
        layers, cin = [], 3
        for v in cfg:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(nn.Linear(32 * 4, 64), nn.ReLU(True), nn.Dropout(p=dropout),
                                        nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(p=dropout), nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


@register("vgg11_bn", "vgg")
def vgg():
    return VGG()


class _DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size, drop_rate):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, inputs):
        prev = [inputs] if isinstance(inputs, torch.Tensor) else inputs
        concated = torch.cat(prev, 1)
        bottleneck = self.conv1(self.relu1(self.norm1(concated)))
        new = self.conv2(self.relu2(self.norm2(bottleneck)))
        if self.drop_rate > 0:
            new = F.dropout(new, p=self.drop_rate, training=self.training)
        return new


class _DenseBlock(nn.ModuleDict):
    def __init__(self, n, cin, bn_size, growth, drop_rate):
        super().__init__()
        for i in range(n):
            self.add_module(f"denselayer{i + 1}", _DenseLayer(cin + i * growth, growth, bn_size, drop_rate))

    def forward(self, init_features):
        features = [init_features]
        for _, layer in self.items():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(cin, cout, 1, 1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    def __init__(self, growth=8, blocks=(2, 2), init=16, bn_size=2, drop_rate=0.1, num_classes=10):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, init, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(init))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        c = init
        for i, n in enumerate(blocks):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(n, c, bn_size, growth, drop_rate))
            c += n * growth
            if i != len(blocks) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(c, c // 2))
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


@register("densenet121", "densenet")
def densenet():
    return DenseNet()


class Fire(nn.Module):
    def __init__(self, inplanes, squeeze, e1, e3):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, e1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, e3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, kernel_size=3, stride=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(16, 8, 16, 16), Fire(32, 8, 16, 16),
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True), Fire(32, 8, 16, 16))
        final = nn.Conv2d(32, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.5), final, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        x = self.classifier(self.features(x))
        return torch.flatten(x, 1)


@register("squeezenet1_1", "squeezenet")
def squeezenet():
    return SqueezeNet()


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    def __init__(self, cin, ch1, ch3r, ch3, ch5r, ch5, pool_proj):
        super().__init__()
        self.branch1 = BasicConv2d(cin, ch1, kernel_size=1)
        self.branch2 = nn.Sequential(BasicConv2d(cin, ch3r, kernel_size=1), BasicConv2d(ch3r, ch3, kernel_size=3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(cin, ch5r, kernel_size=1), BasicConv2d(ch5r, ch5, kernel_size=3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(cin, pool_proj, kernel_size=1))

    def forward(self, x):
        outputs = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(outputs, 1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = BasicConv2d(3, 16, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(16, 8, 8, 16, 4, 8, 8)
        self.inception3b = Inception(40, 16, 8, 16, 4, 8, 8)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=0.2)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.maxpool1(self.conv1(x))
        x = self.inception3b(self.inception3a(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(self.dropout(x))


@register("googlenet", "inception")
def googlenet():
    return GoogLeNet()


# ---------------------------------------------------------------- detection: FPN + shared head, YOLOv8
class FPN(nn.Module):
    """torchvision.ops.FeaturePyramidNetwork with a LastLevelP6P7-like extra level."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.inner_blocks = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.layer_blocks = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        self.p6 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)

    def forward(self, feats):
        last_inner = self.inner_blocks[-1](feats[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(feats) - 2, -1, -1):
            inner_lateral = self.inner_blocks[idx](feats[idx])
            feat_shape = inner_lateral.shape[-2:]
            inner_top_down = F.interpolate(last_inner, size=feat_shape, mode="nearest")
            last_inner = inner_lateral + inner_top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        results.append(self.p6(F.relu(results[-1])))
        return results


class RetinaHead(nn.Module):
    """One head module called on every FPN level (weights shared across levels)."""

    def __init__(self, c, num_anchors=3, num_classes=4):
        super().__init__()
        self.num_classes = num_classes
        cls, box = [], []
        for _ in range(2):
            cls += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True)]
            box += [nn.Conv2d(c, c, 3, padding=1), nn.ReLU(inplace=True)]
        self.cls_subnet, self.bbox_subnet = nn.Sequential(*cls), nn.Sequential(*box)
        self.cls_logits = nn.Conv2d(c, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(c, num_anchors * 4, 3, padding=1)

    def forward(self, x):
        n = x.shape[0]
        cls = self.cls_logits(self.cls_subnet(x)).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes)
        box = self.bbox_pred(self.bbox_subnet(x)).permute(0, 2, 3, 1).reshape(n, -1, 4)
        return cls, box


class RetinaNetLite(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = ResNet(BasicBlock, [1, 1, 1], widths=(8, 16, 32))
        self.fpn = FPN([8, 16, 32], 16)
        self.head = RetinaHead(16)

    def forward(self, x):
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        feats = []
        for layer in b.layers:
            x = layer(x)
            feats.append(x)
        outs = [self.head(p) for p in self.fpn(feats)]
        return torch.cat([o[0] for o in outs], 1), torch.cat([o[1] for o in outs], 1)


@register("retinanet_fpn_shared_head", "detection", partial(_image, size=64))
def retinanet():
    return RetinaNetLite()


class FCOSLite(nn.Module):
    """An FCOS-style detector on a plain conv backbone (no residual adds): FPN, and one head
    module (classification, box regression, centerness) called on every level."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.stem = nn.Sequential(Conv2dNormActivation(3, 8, stride=2), Conv2dNormActivation(8, 8, stride=2))
        self.stages = nn.ModuleList([Conv2dNormActivation(8, 8, stride=2), Conv2dNormActivation(8, 16, stride=2),
                                     Conv2dNormActivation(16, 32, stride=2)])
        self.fpn = FPN([8, 16, 32], 16)
        tower = []
        for _ in range(2):
            tower += [nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True)]
        self.tower = nn.Sequential(*tower)
        self.cls_logits = nn.Conv2d(16, num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(16, 4, 3, padding=1)
        self.centerness = nn.Conv2d(16, 1, 3, padding=1)
        self.num_classes = num_classes

    def head(self, x):
        n = x.shape[0]
        t = self.tower(x)
        cls = self.cls_logits(t).permute(0, 2, 3, 1).reshape(n, -1, self.num_classes)
        box = F.relu(self.bbox_pred(t)).permute(0, 2, 3, 1).reshape(n, -1, 4)
        ctr = self.centerness(t).permute(0, 2, 3, 1).reshape(n, -1, 1)
        return torch.cat([cls, box, ctr], -1)

    def forward(self, x):
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return torch.cat([self.head(p) for p in self.fpn(feats)], 1)


@register("fcos_fpn_shared_head", "detection", partial(_image, size=64))
def fcos():
    return FCOSLite()


def autopad(k, p=None, d=1):
    if d > 1:
        k = d * (k - 1) + 1
    return k // 2 if p is None else p


class YConv(nn.Module):
    """ultralytics.nn.modules.conv.Conv."""
    default_act = nn.SiLU()

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = self.default_act if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class YBottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, g=1, k=(3, 3), e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = YConv(c1, c_, k[0], 1)
        self.cv2 = YConv(c_, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, c1, c2, n=1, shortcut=False, g=1, e=0.5):
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = YConv(c1, 2 * self.c, 1, 1)
        self.cv2 = YConv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(YBottleneck(self.c, self.c, shortcut, g, k=((3, 3), (3, 3))[0], e=1.0) for _ in range(n))

    def forward(self, x):
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = YConv(c1, c_, 1, 1)
        self.cv2 = YConv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.m(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    def __init__(self, c1=16):
        super().__init__()
        self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
        x = torch.arange(c1, dtype=torch.float)
        self.conv.weight.data[:] = nn.Parameter(x.view(1, c1, 1, 1))
        self.c1 = c1

    def forward(self, x):
        b, _, a = x.shape
        return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)


def make_anchors(feats, strides, grid_cell_offset=0.5):
    anchor_points, stride_tensor = [], []
    dtype, device = feats[0].dtype, feats[0].device
    for i, stride in enumerate(strides):
        _, _, h, w = feats[i].shape
        sx = torch.arange(end=w, device=device, dtype=dtype) + grid_cell_offset
        sy = torch.arange(end=h, device=device, dtype=dtype) + grid_cell_offset
        sy, sx = torch.meshgrid(sy, sx, indexing="ij")
        anchor_points.append(torch.stack((sx, sy), -1).view(-1, 2))
        stride_tensor.append(torch.full((h * w, 1), stride, dtype=dtype, device=device))
    return torch.cat(anchor_points), torch.cat(stride_tensor)


def dist2bbox(distance, anchor_points, xywh=True, dim=-1):
    lt, rb = distance.chunk(2, dim)
    x1y1 = anchor_points - lt
    x2y2 = anchor_points + rb
    if xywh:
        c_xy = (x1y1 + x2y2) / 2
        wh = x2y2 - x1y1
        return torch.cat((c_xy, wh), dim)
    return torch.cat((x1y1, x2y2), dim)


class Detect(nn.Module):
    """ultralytics Detect (v8) in inference mode: DFL box decoding against anchors and strides."""
    dynamic = False
    shape = None
    anchors = torch.empty(0)
    strides = torch.empty(0)

    def __init__(self, nc=4, ch=(), stride=(8, 16, 32)):
        super().__init__()
        self.nc, self.nl, self.reg_max = nc, len(ch), 8
        self.no = nc + self.reg_max * 4
        self.stride = torch.tensor(stride, dtype=torch.float)
        c2, c3 = max(16, ch[0] // 4, self.reg_max * 4), max(ch[0], min(self.nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(YConv(x, c2, 3), YConv(c2, c2, 3), nn.Conv2d(c2, 4 * self.reg_max, 1)) for x in ch)
        self.cv3 = nn.ModuleList(nn.Sequential(YConv(x, c3, 3), YConv(c3, c3, 3), nn.Conv2d(c3, self.nc, 1)) for x in ch)
        self.dfl = DFL(self.reg_max)

    def forward(self, x):
        for i in range(self.nl):
            x[i] = torch.cat((self.cv2[i](x[i]), self.cv3[i](x[i])), 1)
        shape = x[0].shape
        x_cat = torch.cat([xi.view(shape[0], self.no, -1) for xi in x], 2)
        if self.dynamic or self.shape != shape:
            self.anchors, self.strides = (t.transpose(0, 1) for t in make_anchors(x, self.stride, 0.5))
            self.shape = shape
        box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
        dbox = dist2bbox(self.dfl(box), self.anchors.unsqueeze(0), xywh=True, dim=1) * self.strides
        return torch.cat((dbox, cls.sigmoid()), 1)


class YOLOv8(nn.Module):
    def __init__(self):
        super().__init__()
        self.b0, self.b1 = YConv(3, 8, 3, 2), YConv(8, 16, 3, 2)
        self.b2 = C2f(16, 16, 1, True)
        self.b3, self.b4 = YConv(16, 32, 3, 2), C2f(32, 32, 1, True)
        self.b5, self.b6 = YConv(32, 32, 3, 2), C2f(32, 32, 1, True)
        self.b7, self.b8 = YConv(32, 32, 3, 2), C2f(32, 32, 1, True)
        self.sppf = SPPF(32, 32, 5)
        self.up = nn.Upsample(None, 2, "nearest")
        self.h1 = C2f(64, 32, 1)
        self.h2 = C2f(64, 16, 1)
        self.d1, self.h3 = YConv(16, 16, 3, 2), C2f(48, 32, 1)
        self.d2, self.h4 = YConv(32, 32, 3, 2), C2f(64, 32, 1)
        self.detect = Detect(4, (16, 32, 32))

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.sppf(self.b8(self.b7(p4)))
        n4 = self.h1(torch.cat([self.up(p5), p4], 1))
        n3 = self.h2(torch.cat([self.up(n4), p3], 1))
        n4b = self.h3(torch.cat([self.d1(n3), n4], 1))
        n5 = self.h4(torch.cat([self.d2(n4b), p5], 1))
        return self.detect([n3, n4b, n5])


@register("yolov8n", "detection", partial(_image, size=64))
def yolov8():
    return YOLOv8()


# ---------------------------------------------------------------- segmentation: U-Net, DeepLabV3
class DoubleConv(nn.Module):
    def __init__(self, cin, cout, mid=None):
        super().__init__()
        mid = mid or cout
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, mid, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(cin, cout))

    def forward(self, x):
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, cin, cout, bilinear=True):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(cin, cout, cin // 2)
        else:
            self.up = nn.ConvTranspose2d(cin, cin // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(cin, cout)

    def forward(self, x1, x2):
        x1 = self.up(x1)
        diffY = x2.size()[2] - x1.size()[2]
        diffX = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diffX // 2, diffX - diffX // 2, diffY // 2, diffY - diffY // 2])
        x = torch.cat([x2, x1], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    def __init__(self, n_classes=3, bilinear=True):
        super().__init__()
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(3, 8)
        self.down1, self.down2 = Down(8, 16), Down(16, 32 // factor)
        self.up1 = Up(32, 16 // factor, bilinear)
        self.up2 = Up(16, 8, bilinear)
        self.outc = nn.Conv2d(8, n_classes, kernel_size=1)

    def forward(self, x):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x = self.up1(x3, x2)
        x = self.up2(x, x1)
        return self.outc(x)


@register("unet_bilinear", "segmentation")
def unet_bilinear():
    return UNet(bilinear=True)


@register("unet_convtranspose", "segmentation")
def unet_transpose():
    return UNet(bilinear=False)


class ASPPConv(nn.Sequential):
    def __init__(self, cin, cout, dilation):
        super().__init__(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class ASPPPooling(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x):
        size = x.shape[-2:]
        for mod in self:
            x = mod(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, cin, rates, cout=16):
        super().__init__()
        modules = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())]
        modules += [ASPPConv(cin, cout, r) for r in rates]
        modules.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(modules)
        self.project = nn.Sequential(nn.Conv2d(len(self.convs) * cout, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x):
        res = [conv(x) for conv in self.convs]
        res = torch.cat(res, dim=1)
        return self.project(res)


class DeepLabV3(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.backbone = ResNet(Bottleneck, [1, 1, 1], widths=(8, 8, 8), dilate_last=True)
        self.classifier = nn.Sequential(ASPP(32, [2, 4]), nn.Conv2d(16, 16, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, num_classes, 1))

    def forward(self, x):
        input_shape = x.shape[-2:]
        features = self.backbone.features(x)
        x = self.classifier(features)
        return F.interpolate(x, size=input_shape, mode="bilinear", align_corners=False)


@register("deeplabv3_aspp", "segmentation")
def deeplab():
    return DeepLabV3()


class ESPCN(nn.Module):
    """Super-resolution head: conv, tanh, conv to C*r*r, PixelShuffle."""

    def __init__(self, r=2):
        super().__init__()
        self.feat = nn.Sequential(nn.Conv2d(3, 16, 5, padding=2), nn.Tanh(), nn.Conv2d(16, 8, 3, padding=1), nn.Tanh())
        self.sub_pixel = nn.Sequential(nn.Conv2d(8, 3 * r * r, 3, padding=1), nn.PixelShuffle(r))

    def forward(self, x):
        return self.sub_pixel(self.feat(x))


@register("espcn_pixel_shuffle", "super_resolution")
def espcn():
    return ESPCN()


class GNResBlock(nn.Module):
    """A diffusion U-Net ResBlock: GroupNorm, SiLU, conv, twice, plus a skip."""

    def __init__(self, cin, cout, groups=4):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nonlinearity = nn.SiLU()
        self.dropout = nn.Dropout(0.1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))
        return self.skip(x) + h


class GNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.Sequential(GNResBlock(16, 16), GNResBlock(16, 32))
        self.norm_out, self.conv_out = nn.GroupNorm(4, 32), nn.Conv2d(32, 3, 3, padding=1)

    def forward(self, x):
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(x)))))


@register("groupnorm_resblocks", "diffusion")
def gnnet():
    return GNNet()


# ---------------------------------------------------------------- style transfer, super-resolution, mixer
class ConvIN(nn.Module):
    """fast-neural-style's ConvLayer + InstanceNorm2d(affine=True): reflection padding, conv."""

    def __init__(self, cin, cout, k, stride=1, relu=True):
        super().__init__()
        self.pad = nn.ReflectionPad2d(k // 2)
        self.conv = nn.Conv2d(cin, cout, k, stride)
        self.norm = nn.InstanceNorm2d(cout, affine=True)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x):
        return self.relu(self.norm(self.conv(self.pad(x))))


class StyleResidual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a, self.b = ConvIN(c, c, 3), ConvIN(c, c, 3, relu=False)

    def forward(self, x):
        residual = x
        out = self.b(self.a(x))
        out += residual
        return out


class TransformerNet(nn.Module):
    """The PyTorch examples' fast-neural-style TransformerNet (narrow): instance norms with and
    without running statistics, reflection padding, nearest upsampling."""

    def __init__(self):
        super().__init__()
        self.down = nn.Sequential(ConvIN(3, 8, 9), ConvIN(8, 16, 3, 2))
        self.res = nn.Sequential(StyleResidual(16), StyleResidual(16))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), ConvIN(16, 8, 3))
        self.plain_norm = nn.InstanceNorm2d(8)          # no affine, batch statistics
        self.out = nn.Sequential(nn.ReflectionPad2d(4), nn.Conv2d(8, 3, 9))

    def forward(self, x):
        return self.out(self.plain_norm(self.up(self.res(self.down(x)))))


@register("fast_style_instancenorm", "style")
def fast_style():
    return TransformerNet()


class UnshuffleSR(nn.Module):
    """A super-resolution net that folds space into channels first (pixel_unshuffle, as
    Real-ESRGAN's x2 model does) and ends in a sub-pixel conv (pixel_shuffle)."""

    def __init__(self, c=16):
        super().__init__()
        self.head = nn.Conv2d(12, c, 3, padding=1)
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                                  nn.Conv2d(c, c, 3, padding=1))
        self.up = nn.Conv2d(c, 3 * 16, 3, padding=1)

    def forward(self, x):
        feat = self.head(F.pixel_unshuffle(x, 2))
        feat = feat + self.body(feat)
        return F.pixel_shuffle(self.up(feat), 4)


@register("sr_pixel_unshuffle", "superres")
def sr_unshuffle():
    return UnshuffleSR()


class SwapaxesMixerBlock(nn.Module):
    """MLP-Mixer's block as its public code writes it: token mixing on swapped axes."""

    def __init__(self, tokens, dim):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.token_mlp = nn.Sequential(nn.Linear(tokens, 2 * tokens), nn.GELU(), nn.Linear(2 * tokens, tokens))
        self.channel_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + torch.swapaxes(self.token_mlp(torch.swapaxes(self.norm1(x), 1, 2)), 1, 2)
        return x + self.channel_mlp(self.norm2(x))


class SwapaxesMixer(nn.Module):
    def __init__(self, dim=32, patch=8, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, patch, patch)
        tokens = (IMG // patch) ** 2
        self.blocks = nn.Sequential(SwapaxesMixerBlock(tokens, dim), SwapaxesMixerBlock(tokens, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = torch.movedim(self.stem(x).flatten(2), 1, 2)
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


@register("mlp_mixer_swapaxes", "mixer")
def mlp_mixer():
    return SwapaxesMixer()


# ---------------------------------------------------------------- BEV: grid_sample view transform
class IPMViewTransform(nn.Module):
    """Image features to a bird's-eye-view grid through a fixed sampling grid (inverse perspective
    mapping), as BEV perception stacks do with ``F.grid_sample``; a BEV conv follows."""

    def __init__(self, bev=(8, 8)):
        super().__init__()
        self.backbone = nn.Sequential(Conv2dNormActivation(3, 16, stride=2), Conv2dNormActivation(16, 16, stride=2))
        ys, xs = torch.meshgrid(torch.linspace(0.1, 1.0, bev[0]), torch.linspace(-1.0, 1.0, bev[1]), indexing="ij")
        u = xs / (0.3 + ys)                     # a ground plane seen by a pinhole camera
        v = 1.0 - 2.0 * ys
        self.register_buffer("grid", torch.stack([u.clamp(-1.2, 1.2), v], -1).unsqueeze(0))
        self.bev_encoder = nn.Sequential(Conv2dNormActivation(16, 16), nn.Conv2d(16, 4, 1))

    def forward(self, img):
        feat = self.backbone(img)
        grid = self.grid.expand(feat.shape[0], -1, -1, -1)
        bev = F.grid_sample(feat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return self.bev_encoder(bev)


@register("bev_ipm_grid_sample", "bev")
def bev_ipm():
    return IPMViewTransform()


class DeformableSampling(nn.Module):
    """Deformable sampling: a conv predicts per-pixel offsets added to a base grid, then
    ``F.grid_sample`` (nearest, border padding, align_corners=True) reads the features there."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = Conv2dNormActivation(3, c, stride=2)
        self.offset = nn.Conv2d(c, 2, 3, padding=1)
        self.out = nn.Conv2d(c, 8, 3, padding=1)

    def forward(self, x):
        f = self.stem(x)
        n, _, h, w = f.shape
        ys = torch.linspace(-1, 1, h, device=x.device)
        xs = torch.linspace(-1, 1, w, device=x.device)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        base = torch.stack((gx, gy), -1).unsqueeze(0)
        grid = base + 0.25 * torch.tanh(self.offset(f)).permute(0, 2, 3, 1)
        sampled = F.grid_sample(f, grid, mode="nearest", padding_mode="border", align_corners=True)
        return self.out(sampled + f)


@register("deformable_grid_sample", "bev")
def deformable():
    return DeformableSampling()


# ---------------------------------------------------------------- sequence models
class LSTMClassifier(nn.Module):
    def __init__(self, features=8, hidden=16, classes=5):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True, dropout=0.1)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return self.fc(out[:, -1, :])


@register("lstm_classifier", "rnn", _sequence)
def lstm():
    return LSTMClassifier()


class GRUTextClassifier(nn.Module):
    def __init__(self, vocab=100, emb=16, hidden=16, classes=5):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.gru = nn.GRU(emb, hidden, batch_first=True, bidirectional=True)
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, ids):
        out, h = self.gru(self.embedding(ids))
        h = torch.cat((h[-2], h[-1]), dim=1)
        return self.fc(self.dropout(h))


@register("gru_text_classifier", "rnn", partial(_tokens, mask=False))
def gru():
    return GRUTextClassifier()


class Chomp1d(nn.Module):
    def __init__(self, chomp_size):
        super().__init__()
        self.chomp_size = chomp_size

    def forward(self, x):
        return x[:, :, :-self.chomp_size].contiguous()


class TemporalBlock(nn.Module):
    """locuslab/TCN's block (without weight_norm, which deployment removes first)."""

    def __init__(self, n_in, n_out, kernel_size, stride, dilation, padding, dropout=0.2):
        super().__init__()
        self.conv1 = nn.Conv1d(n_in, n_out, kernel_size, stride=stride, padding=padding, dilation=dilation)
        self.chomp1, self.relu1, self.dropout1 = Chomp1d(padding), nn.ReLU(), nn.Dropout(dropout)
        self.conv2 = nn.Conv1d(n_out, n_out, kernel_size, stride=stride, padding=padding, dilation=dilation)
        self.chomp2, self.relu2, self.dropout2 = Chomp1d(padding), nn.ReLU(), nn.Dropout(dropout)
        self.net = nn.Sequential(self.conv1, self.chomp1, self.relu1, self.dropout1,
                                 self.conv2, self.chomp2, self.relu2, self.dropout2)
        self.downsample = nn.Conv1d(n_in, n_out, 1) if n_in != n_out else None
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.net(x)
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class TCN(nn.Module):
    def __init__(self, n_in=8, channels=(16, 16), kernel_size=3, classes=5):
        super().__init__()
        layers = []
        for i, c in enumerate(channels):
            d = 2 ** i
            layers.append(TemporalBlock(n_in if i == 0 else channels[i - 1], c, kernel_size, 1, d, (kernel_size - 1) * d))
        self.network = nn.Sequential(*layers)
        self.linear = nn.Linear(channels[-1], classes)

    def forward(self, x):          # x: (N, T, C) as the sequence loaders give it
        y = self.network(x.transpose(1, 2))
        return self.linear(y[:, :, -1])


@register("tcn", "rnn", _sequence)
def tcn():
    return TCN()


# ---------------------------------------------------------------- transformers written by hand
class MLPBlock(nn.Sequential):
    def __init__(self, dim, mlp_dim, dropout):
        super().__init__(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim), nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    """torchvision.models.vision_transformer.EncoderBlock (nn.MultiheadAttention)."""

    def __init__(self, heads, dim, mlp_dim, dropout=0.0, attention_dropout=0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, heads, dropout=attention_dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim, dropout)

    def forward(self, input):
        x = self.ln_1(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x)
        x = x + input
        y = self.ln_2(x)
        y = self.mlp(y)
        return x + y


class VisionTransformer(nn.Module):
    def __init__(self, image_size=IMG, patch=8, layers=2, heads=2, dim=32, mlp_dim=64, classes=10):
        super().__init__()
        self.patch_size, self.hidden_dim = patch, dim
        self.conv_proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        seq = (image_size // patch) ** 2 + 1
        self.class_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, seq, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(0.1)
        self.layers = nn.Sequential(*[EncoderBlock(heads, dim, mlp_dim, 0.1, 0.1) for _ in range(layers)])
        self.ln = nn.LayerNorm(dim, eps=1e-6)
        self.heads = nn.Sequential(nn.Linear(dim, classes))

    def _process_input(self, x):
        n, c, h, w = x.shape
        p = self.patch_size
        n_h, n_w = h // p, w // p
        x = self.conv_proj(x)
        x = x.reshape(n, self.hidden_dim, n_h * n_w)
        return x.permute(0, 2, 1)

    def forward(self, x):
        x = self._process_input(x)
        n = x.shape[0]
        batch_class_token = self.class_token.expand(n, -1, -1)
        x = torch.cat([batch_class_token, x], dim=1)
        x = self.ln(self.layers(self.dropout(x + self.pos_embedding)))
        return self.heads(x[:, 0])


@register("vit_b16_mha", "vit")
def vit():
    return VisionTransformer()


class Attention(nn.Module):
    """timm's Attention (hand-written softmax(q k^T) v)."""

    def __init__(self, dim, num_heads=2, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        attn = self.attn_drop(attn)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, drop=0.0):
        super().__init__()
        self.fc1, self.act, self.drop1 = nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(drop)
        self.fc2, self.drop2 = nn.Linear(hidden, dim), nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class TimmBlock(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=2.0, drop_path=0.1):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.drop_path = StochasticDepth(drop_path)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class PatchEmbed(nn.Module):
    def __init__(self, patch=8, dim=32):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DistilledViT(nn.Module):
    """DeiT (distilled): cls and distillation tokens; two heads averaged at inference."""

    def __init__(self, dim=32, depth=2, heads=2, classes=10):
        super().__init__()
        self.patch_embed = PatchEmbed(8, dim)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.dist_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, (IMG // 8) ** 2 + 2, dim))
        self.pos_drop = nn.Dropout(p=0.1)
        self.blocks = nn.Sequential(*[TimmBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head, self.head_dist = nn.Linear(dim, classes), nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), self.dist_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self.norm(self.blocks(self.pos_drop(x + self.pos_embed)))
        x, x_dist = self.head(x[:, 0]), self.head_dist(x[:, 1])
        return (x + x_dist) / 2


@register("deit_distilled", "vit")
def deit():
    return DistilledViT()


def shifted_window_attention(input, qkv_weight, proj_weight, relative_position_bias, window_size, num_heads,
                             shift_size, attention_dropout=0.0, dropout=0.0, qkv_bias=None, proj_bias=None,
                             training=True):
    """torchvision.models.swin_transformer.shifted_window_attention (v1)."""
    B, H, W, C = input.shape
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    _, pad_H, pad_W, _ = x.shape
    shift_size = shift_size.copy()
    if window_size[0] >= pad_H:
        shift_size[0] = 0
    if window_size[1] >= pad_W:
        shift_size[1] = 0
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    num_windows = (pad_H // window_size[0]) * (pad_W // window_size[1])
    x = x.view(B, pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, window_size[0] * window_size[1], C)
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    q = q * (C // num_heads) ** -0.5
    attn = q.matmul(k.transpose(-2, -1))
    attn = attn + relative_position_bias
    if sum(shift_size) > 0:
        attn_mask = x.new_zeros((pad_H, pad_W))
        h_slices = ((0, -window_size[0]), (-window_size[0], -shift_size[0]), (-shift_size[0], None))
        w_slices = ((0, -window_size[1]), (-window_size[1], -shift_size[1]), (-shift_size[1], None))
        count = 0
        for h in h_slices:
            for w in w_slices:
                attn_mask[h[0]: h[1], w[0]: w[1]] = count
                count += 1
        attn_mask = attn_mask.view(pad_H // window_size[0], window_size[0], pad_W // window_size[1], window_size[1])
        attn_mask = attn_mask.permute(0, 2, 1, 3).reshape(num_windows, window_size[0] * window_size[1])
        attn_mask = attn_mask.unsqueeze(1) - attn_mask.unsqueeze(2)
        attn_mask = attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))
        attn = attn.view(x.size(0) // num_windows, num_windows, num_heads, x.size(1), x.size(1))
        attn = attn + attn_mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, num_heads, x.size(1), x.size(1))
    attn = F.softmax(attn, dim=-1)
    attn = F.dropout(attn, p=attention_dropout, training=training)
    x = attn.matmul(v).transpose(1, 2).reshape(x.size(0), x.size(1), C)
    x = F.linear(x, proj_weight, proj_bias)
    x = F.dropout(x, p=dropout, training=training)
    x = x.view(B, pad_H // window_size[0], pad_W // window_size[1], window_size[0], window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_H, pad_W, C)
    if sum(shift_size) > 0:
        x = torch.roll(x, shifts=(shift_size[0], shift_size[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


class ShiftedWindowAttention(nn.Module):
    def __init__(self, dim, window_size, shift_size, num_heads):
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = window_size, shift_size, num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            0.02 * torch.randn((2 * window_size[0] - 1) * (2 * window_size[1] - 1), num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size[0]), torch.arange(window_size[1]), indexing="ij"))
        coords_flatten = torch.flatten(coords, 1)
        relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
        relative_coords = relative_coords.permute(1, 2, 0).contiguous()
        relative_coords[:, :, 0] += window_size[0] - 1
        relative_coords[:, :, 1] += window_size[1] - 1
        relative_coords[:, :, 0] *= 2 * window_size[1] - 1
        self.register_buffer("relative_position_index", relative_coords.sum(-1).flatten())

    def get_relative_position_bias(self):
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x):
        return shifted_window_attention(x, self.qkv.weight, self.proj.weight, self.get_relative_position_bias(),
                                        self.window_size, self.num_heads, shift_size=self.shift_size,
                                        qkv_bias=self.qkv.bias, proj_bias=self.proj.bias, training=self.training)


class SwinBlock(nn.Module):
    def __init__(self, dim, heads, window_size, shift_size, sd_prob=0.1, attn_layer=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = (attn_layer or ShiftedWindowAttention)(dim, window_size, shift_size, heads)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = MLPBlock(dim, 2 * dim, 0.0)

    def forward(self, x):
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        x = x + self.stochastic_depth(self.mlp(self.norm2(x)))
        return x


class PatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        H, W, _ = x.shape[-3:]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x0, x1 = x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :]
        x2, x3 = x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], -1)
        return self.reduction(self.norm(x))


class SwinTransformer(nn.Module):
    """torchvision's SwinTransformer; ``block``/``downsample_layer`` give its V2 (as torchvision does)."""

    def __init__(self, dim=16, depths=(2, 2), heads=(2, 4), window=(4, 4), classes=10, block=None,
                 downsample_layer=None):
        super().__init__()
        block, downsample_layer = block or SwinBlock, downsample_layer or PatchMerging
        layers = [nn.Sequential(nn.Conv2d(3, dim, kernel_size=4, stride=4), Permute([0, 2, 3, 1]), nn.LayerNorm(dim))]
        for i, (d, h) in enumerate(zip(depths, heads)):
            c = dim * 2 ** i
            layers.append(nn.Sequential(*[block(c, h, list(window), [0 if k % 2 == 0 else w // 2 for w in window])
                                          for k in range(d)]))
            if i + 1 < len(depths):
                layers.append(downsample_layer(c))
        self.features = nn.Sequential(*layers)
        c = dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(c)
        self.permute = Permute([0, 3, 1, 2])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        x = self.norm(self.features(x))
        x = self.flatten(self.avgpool(self.permute(x)))
        return self.head(x)


@register("swin_t", "swin")
def swin():
    return SwinTransformer()


class MixerBlock(nn.Module):
    def __init__(self, tokens, dim, token_hidden=16, channel_hidden=64):
        super().__init__()
        self.norm1, self.mlp_tokens = nn.LayerNorm(dim, eps=1e-6), Mlp(tokens, token_hidden)
        self.norm2, self.mlp_channels = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, channel_hidden)

    def forward(self, x):
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.mlp_channels(self.norm2(x))
        return x


class MlpMixer(nn.Module):
    def __init__(self, dim=32, depth=2, classes=10):
        super().__init__()
        self.stem = PatchEmbed(8, dim)
        self.blocks = nn.Sequential(*[MixerBlock((IMG // 8) ** 2, dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.norm(self.blocks(self.stem(x)))
        return self.head(x.mean(dim=1))


@register("mlp_mixer", "mixer")
def mixer():
    return MlpMixer()


class TransformerClassifier(nn.Module):
    """nn.TransformerEncoder over token embeddings with a padding mask (a common user model)."""

    def __init__(self, vocab=100, dim=32, classes=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, 16, dim))
        layer = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.1, batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.fc = nn.Linear(dim, classes)

    def forward(self, ids, attention_mask):
        x = self.embed(ids) + self.pos[:, :ids.shape[1]]
        x = self.encoder(x, src_key_padding_mask=attention_mask == 0)
        return self.fc(x[:, 0])


@register("nn_transformer_encoder", "text", _tokens)
def nn_transformer():
    return TransformerClassifier()


class CausalSelfAttention(nn.Module):
    """nanoGPT's attention (F.scaled_dot_product_attention, is_causal=True)."""

    def __init__(self, n_embd, n_head, dropout=0.1):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout, self.resid_dropout = nn.Dropout(dropout), nn.Dropout(dropout)
        self.n_head, self.n_embd, self.dropout = n_head, n_embd, dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0,
                                           is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class GPTBlock(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(n_embd), CausalSelfAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd), nn.Dropout(0.1))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class NanoGPT(nn.Module):
    def __init__(self, vocab=100, block_size=16, n_embd=32, n_head=2, n_layer=2):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, n_embd), wpe=nn.Embedding(block_size, n_embd), drop=nn.Dropout(0.1),
            h=nn.ModuleList([GPTBlock(n_embd, n_head) for _ in range(n_layer)]), ln_f=nn.LayerNorm(n_embd)))
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight   # weight tying

    def forward(self, idx):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        return self.lm_head(x[:, [-1], :])


@register("nanogpt_causal", "text", partial(_tokens, mask=False))
def nanogpt():
    return NanoGPT()


# ---------------------------------------------------------------- Hugging Face transformers (tiny configs)
import transformers as tf  # noqa: E402
from transformers.models.whisper.modeling_whisper import WhisperEncoder  # noqa: E402


class HFOutput(nn.Module):
    """Calls a transformers model and returns one plain tensor (``field`` of its output)."""

    def __init__(self, model, field, keys=("input_ids", "attention_mask")):
        super().__init__()
        self.model, self.field, self.keys = model, field, keys

    def forward(self, *inputs):
        return getattr(self.model(**dict(zip(self.keys, inputs))), self.field)


def _hf(cls, config_cls, field, keys=("pixel_values",), attn="eager", **cfg):
    """A builder: ``cls(config_cls(**cfg))`` with ``attn`` attention (None: the library's default,
    SDPA) wrapped to return ``field``."""
    def make():
        config = config_cls(**cfg)
        if attn:
            config._attn_implementation = attn
        return HFOutput(cls(config), field, keys)
    return make


TEXT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=32)
VISION = dict(image_size=IMG, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=2, intermediate_size=64)
LLM = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
           max_position_embeddings=64)
HF_ZOO = {
    "hf_bert": ("text", _tokens, _hf(tf.BertModel, tf.BertConfig, "last_hidden_state",
                                     ("input_ids", "attention_mask"), **TEXT)),
    "hf_bert_sdpa": ("text", _tokens, _hf(tf.BertModel, tf.BertConfig, "last_hidden_state",
                                          ("input_ids", "attention_mask"), attn=None, **TEXT)),
    "hf_distilbert": ("text", _tokens, _hf(tf.DistilBertModel, tf.DistilBertConfig, "last_hidden_state",
                                           ("input_ids", "attention_mask"), vocab_size=100, dim=32, n_layers=2,
                                           n_heads=2, hidden_dim=64, max_position_embeddings=32)),
    "hf_roberta": ("text", _tokens, _hf(tf.RobertaModel, tf.RobertaConfig, "last_hidden_state",
                                        ("input_ids", "attention_mask"), pad_token_id=1, **TEXT)),
    "hf_gpt2": ("text", partial(_tokens, mask=False), _hf(tf.GPT2LMHeadModel, tf.GPT2Config, "logits", ("input_ids",),
                                                          vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                                          bos_token_id=0, eos_token_id=0)),
    "hf_clip_vision": ("vit", _image, _hf(tf.CLIPVisionModel, tf.CLIPVisionConfig, "pooler_output", **VISION)),
    "hf_dinov2": ("vit", _image, _hf(tf.Dinov2Model, tf.Dinov2Config, "pooler_output", **VISION)),
    "hf_vit": ("vit", _image, _hf(tf.ViTForImageClassification, tf.ViTConfig, "logits", num_labels=10, **VISION)),
    "hf_deit": ("vit", _image, _hf(tf.DeiTForImageClassification, tf.DeiTConfig, "logits", num_labels=10, **VISION)),
    "hf_swin": ("swin", _image, _hf(tf.SwinModel, tf.SwinConfig, "pooler_output", image_size=IMG, patch_size=4,
                                    embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)),
    "hf_segformer": ("segmentation", partial(_image, size=64),
                     _hf(tf.SegformerForSemanticSegmentation, tf.SegformerConfig, "logits", num_encoder_blocks=2,
                         depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], num_attention_heads=[1, 2],
                         patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=3)),
    "hf_convnext": ("convnext", _image, _hf(tf.ConvNextForImageClassification, tf.ConvNextConfig, "logits",
                                            hidden_sizes=[16, 32], depths=[1, 1], num_labels=10, num_stages=2)),
    "hf_mobilevit": ("mobilevit", partial(_image, size=64),
                     _hf(tf.MobileViTForImageClassification, tf.MobileViTConfig, "logits", image_size=64,
                         hidden_sizes=[32, 32, 32], neck_hidden_sizes=[8, 8, 16, 16, 24, 24, 48],
                         num_attention_heads=2, num_labels=10)),
    # MobileViT-v2 unfolds its feature map into 2 x 2 patches (F.unfold) and folds them back (F.fold)
    "hf_mobilevitv2": ("mobilevit", partial(_image, size=64),
                       _hf(tf.MobileViTV2ForImageClassification, tf.MobileViTV2Config, "logits", image_size=64,
                           width_multiplier=0.25, num_labels=10)),
    "hf_resnet": ("resnet", _image, _hf(tf.ResNetForImageClassification, tf.ResNetConfig, "logits", embedding_size=8,
                                        hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck", num_labels=10)),
    "hf_mobilenet_v2": ("mobilenet", _image, _hf(tf.MobileNetV2ForImageClassification, tf.MobileNetV2Config, "logits",
                                                 image_size=IMG, depth_multiplier=0.25, num_labels=10)),
    "hf_efficientnet": ("efficientnet", _image, _hf(tf.EfficientNetForImageClassification, tf.EfficientNetConfig,
                                                    "logits", image_size=IMG, width_coefficient=0.25, depth_coefficient=0.25,
                                                    hidden_dim=320, num_labels=10)),
    "hf_regnet": ("regnet", _image, _hf(tf.RegNetForImageClassification, tf.RegNetConfig, "logits", embedding_size=8,
                                        hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, num_labels=10)),
    "hf_whisper_encoder": ("audio", lambda seed: (torch.randn(BATCH, 16, 32, generator=torch.Generator().manual_seed(seed)),),
                           _hf(WhisperEncoder, tf.WhisperConfig, "last_hidden_state",
                               ("input_features",), num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=1,
                               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                               decoder_ffn_dim=64, max_source_positions=16)),
    # video: VideoMAE's tubelet embedding is a conv3d over (frames, height, width)
    "hf_videomae": ("video", lambda seed: (torch.randn(BATCH, 4, 3, 32, 32, generator=torch.Generator().manual_seed(seed)),),
                    _hf(tf.VideoMAEModel, tf.VideoMAEConfig, "last_hidden_state", image_size=32, patch_size=8,
                        num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64)),
    # ESM (protein language model): rotary attention, and embeddings multiplied by the int64 mask
    "hf_esm": ("text", _tokens, _hf(tf.EsmModel, tf.EsmConfig, "last_hidden_state", ("input_ids", "attention_mask"),
                                    vocab_size=100, pad_token_id=1, mask_token_id=99, position_embedding_type="rotary",
                                    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                    max_position_embeddings=64)),
    # HF MobileNetV2's DeepLabV3 head: ASPP with nn.Dropout2d
    "hf_mobilenet_v2_seg": ("segmentation", _image, _hf(tf.MobileNetV2ForSemanticSegmentation, tf.MobileNetV2Config,
                                                         "logits", image_size=IMG, depth_multiplier=0.25, num_labels=3)),
    # decoder LLMs (RMSNorm, rotary embeddings, gated SiLU MLP, grouped-query attention), other
    # text encoders, and vision models with vector norms, attention biases and DPT's neck
    "hf_llama": ("text", _tokens, _hf(tf.LlamaModel, tf.LlamaConfig, "last_hidden_state",
                                      ("input_ids", "attention_mask"), num_key_value_heads=1, **LLM)),
    "hf_phi": ("text", _tokens, _hf(tf.PhiModel, tf.PhiConfig, "last_hidden_state", ("input_ids", "attention_mask"),
                                    **LLM)),
    "hf_gpt_neo": ("text", _tokens, _hf(tf.GPTNeoModel, tf.GPTNeoConfig, "last_hidden_state",
                                        ("input_ids", "attention_mask"), vocab_size=100, hidden_size=32, num_layers=2,
                                        num_heads=2, attention_types=[[["global", "local"], 1]],
                                        max_position_embeddings=64, window_size=8)),
    "hf_t5_encoder": ("text", _tokens, _hf(tf.T5EncoderModel, tf.T5Config, "last_hidden_state",
                                           ("input_ids", "attention_mask"), vocab_size=100, d_model=32, d_kv=16,
                                           d_ff=64, num_layers=2, num_heads=2)),
    "hf_convnextv2": ("convnext", _image, _hf(tf.ConvNextV2Model, tf.ConvNextV2Config, "last_hidden_state",
                                              hidden_sizes=[16, 32], depths=[1, 1], num_stages=2)),
    "hf_swinv2": ("swin", _image, _hf(tf.Swinv2Model, tf.Swinv2Config, "last_hidden_state", image_size=IMG,
                                      patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4)),
    "hf_levit": ("vit", partial(_image, size=64), _hf(tf.LevitModel, tf.LevitConfig, "last_hidden_state",
                                                      image_size=64, hidden_sizes=[16, 32, 48],
                                                      num_attention_heads=[1, 2, 3], depths=[1, 1, 1],
                                                      key_dim=[8, 8, 8])),
    "hf_dpt": ("segmentation", _image, _hf(tf.DPTForDepthEstimation, tf.DPTConfig, "predicted_depth",
                                           image_size=IMG, patch_size=8, hidden_size=32, num_hidden_layers=4,
                                           num_attention_heads=2, intermediate_size=64,
                                           backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 8, 16, 16],
                                           fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5],
                                           head_hidden_size=8, initializer_range=0.2)),   # 0.02: depth ~1e-9
}


def _register_hf():
    for name, (family, inputs, make) in HF_ZOO.items():
        register(name, family, inputs)(make)


_register_hf()

from zoo import models_extra  # noqa: E402,F401

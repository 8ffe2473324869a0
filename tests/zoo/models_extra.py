"""More zoo architectures (issue #20): what a hidden battery of "torchvision, Hugging Face,
ultralytics YOLO and automotive blocks" brings beyond ``zoo.models``. Each is written as its public
code writes it (torchvision's Inception v3, MNASNet, EfficientNetV2, MobileNetV3-Large, ResNeXt,
Wide ResNet, AlexNet, SSDLite, Faster R-CNN's FPN + RPN head, MaxViT, Swin V2 and ViT; ultralytics'
YOLOv5 Detect, YOLOv8-seg Proto, YOLO11 C3k2/C2PSA and RT-DETR's AIFI; Lift-Splat-Shoot,
CenterPoint, PointPillars, BEVFormer's deformable spatial cross attention, PETR's 3D position
embedding and Ultra-Fast-Lane-Detection's row anchors), at tiny widths with random weights; plus a
few more Hugging Face transformers models built from small configs.

Imported at the end of ``zoo.models`` (``from zoo import models_extra``), when that module is fully
initialised: the entries land in the same ``ZOO``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.models import (BATCH, IMG, C2f, Conv2dNormActivation, Detect, EncoderBlock, InvertedResidualV3, MLPBlock,
                        Permute, SqueezeExcitation, SPPF, StochasticDepth, SwinBlock, SwinTransformer, YBottleneck,
                        YConv, YOLOv8, _hf, _image, _make_divisible, _tokens, conv1x1, conv3x3, register, tf)


def _images(seed, size=32, cams=2):
    """Multi-camera images (batch, cams, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(BATCH, cams, 3, size, size, generator=g),)


# ================================================================ torchvision
# ---------------------------------------------------------------- Inception v3
class BasicConv2d(nn.Module):
    """torchvision.models.inception.BasicConv2d."""

    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        x = self.conv(x)
        x = self.bn(x)
        return F.relu(x, inplace=True)


class InceptionA(nn.Module):
    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 8, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_channels, 6, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(6, 8, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 8, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(8, 12, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(12, 12, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(branch_pool)
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 48, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 8, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(8, 12, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(12, 12, kernel_size=3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionC(nn.Module):
    """Factorized 7x7: (1, 7) and (7, 1) convolutions."""

    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 24, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 24, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 24, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 24, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_2(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_3(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_4(branch7x7dbl)
        branch7x7dbl = self.branch7x7dbl_5(branch7x7dbl)
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(branch_pool)
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 24, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(24, 40, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 24, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(24, 24, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(24, 24, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(24, 24, kernel_size=3, stride=2)

    def forward(self, x):
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class InceptionE(nn.Module):
    """Expanded filter bank: the 1x3 / 3x1 pair concatenated."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 40, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(48, 48, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(48, 48, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 56, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(56, 48, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(48, 48, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(48, 48, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 24, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = [self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)]
        branch3x3 = torch.cat(branch3x3, 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = [self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)]
        branch3x3dbl = torch.cat(branch3x3dbl, 1)
        branch_pool = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)
        branch_pool = self.branch_pool(branch_pool)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class Inception3(nn.Module):
    """torchvision.models.Inception3 (aux_logits=False, transform_input=False), one block per kind."""

    def __init__(self, num_classes=10, dropout=0.5):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 8, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(8, 8, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(8, 16, kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(16, 16, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(16, 24, kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(24, pool_features=8)        # 8 + 8 + 12 + 8 = 36
        self.Mixed_6a = InceptionB(36)                          # 48 + 12 + 36 = 96
        self.Mixed_6b = InceptionC(96, channels_7x7=16)         # 96
        self.Mixed_7a = InceptionD(96)                          # 40 + 24 + 96 = 160
        self.Mixed_7b = InceptionE(160)                         # 40 + 96 + 96 + 24 = 256
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x):
        x = self.Conv2d_1a_3x3(x)
        x = self.Conv2d_2a_3x3(x)
        x = self.Conv2d_2b_3x3(x)
        x = self.maxpool1(x)
        x = self.Conv2d_3b_1x1(x)
        x = self.Conv2d_4a_3x3(x)
        x = self.maxpool2(x)
        x = self.Mixed_5b(x)
        x = self.Mixed_6a(x)
        x = self.Mixed_6b(x)
        x = self.Mixed_7a(x)
        x = self.Mixed_7b(x)
        x = self.avgpool(x)
        x = self.dropout(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


@register("inception_v3", "inception", partial(_image, size=96))
def inception_v3():
    return Inception3()


# ---------------------------------------------------------------- MNASNet
_BN_MOMENTUM = 1 - 0.9997


class _InvertedResidual(nn.Module):
    """torchvision.models.mnasnet._InvertedResidual."""

    def __init__(self, in_ch, out_ch, kernel_size, stride, expansion_factor, bn_momentum=0.1):
        super().__init__()
        mid_ch = in_ch * expansion_factor
        self.apply_residual = in_ch == out_ch and stride == 1
        self.layers = nn.Sequential(
            nn.Conv2d(in_ch, mid_ch, 1, bias=False), nn.BatchNorm2d(mid_ch, momentum=bn_momentum), nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, mid_ch, kernel_size, padding=kernel_size // 2, stride=stride, groups=mid_ch, bias=False),
            nn.BatchNorm2d(mid_ch, momentum=bn_momentum), nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch, momentum=bn_momentum))

    def forward(self, input):
        if self.apply_residual:
            return self.layers(input) + input
        return self.layers(input)


def _stack(in_ch, out_ch, kernel_size, stride, exp_factor, repeats, bn_momentum):
    first = _InvertedResidual(in_ch, out_ch, kernel_size, stride, exp_factor, bn_momentum=bn_momentum)
    remaining = [_InvertedResidual(out_ch, out_ch, kernel_size, 1, exp_factor, bn_momentum=bn_momentum)
                 for _ in range(1, repeats)]
    return nn.Sequential(first, *remaining)


class MNASNet(nn.Module):
    def __init__(self, num_classes=10, dropout=0.2):
        super().__init__()
        depths = [8, 8, 12, 16, 24, 32, 48, 64]
        layers = [
            nn.Conv2d(3, depths[0], 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(depths[0], momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(depths[0], depths[0], 3, padding=1, stride=1, groups=depths[0], bias=False),
            nn.BatchNorm2d(depths[0], momentum=_BN_MOMENTUM), nn.ReLU(inplace=True),
            nn.Conv2d(depths[0], depths[1], 1, padding=0, stride=1, bias=False),
            nn.BatchNorm2d(depths[1], momentum=_BN_MOMENTUM),
            _stack(depths[1], depths[2], 3, 2, 3, 2, _BN_MOMENTUM),
            _stack(depths[2], depths[3], 5, 2, 3, 2, _BN_MOMENTUM),
            _stack(depths[3], depths[4], 5, 2, 6, 1, _BN_MOMENTUM),
            _stack(depths[4], depths[5], 3, 1, 6, 1, _BN_MOMENTUM),
            _stack(depths[5], depths[6], 5, 2, 6, 1, _BN_MOMENTUM),
            nn.Conv2d(depths[6], depths[7], 1, padding=0, stride=1, bias=False),
            nn.BatchNorm2d(depths[7], momentum=_BN_MOMENTUM), nn.ReLU(inplace=True)]
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(depths[7], num_classes))

    def forward(self, x):
        x = self.layers(x)
        x = x.mean([2, 3])
        return self.classifier(x)


@register("mnasnet", "mnasnet")
def mnasnet():
    return MNASNet()


# ---------------------------------------------------------------- EfficientNetV2 (FusedMBConv)
class FusedMBConv(nn.Module):
    """torchvision.models.efficientnet.FusedMBConv."""

    def __init__(self, cin, cout, expand_ratio, kernel, stride, sd_prob, norm_layer):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expanded = _make_divisible(cin * expand_ratio, 8)
        layers = []
        if expanded != cin:
            layers.append(Conv2dNormActivation(cin, expanded, kernel, stride, norm_layer=norm_layer,
                                               activation_layer=nn.SiLU))
            layers.append(Conv2dNormActivation(expanded, cout, 1, norm_layer=norm_layer, activation_layer=None))
        else:
            layers.append(Conv2dNormActivation(cin, cout, kernel, stride, norm_layer=norm_layer,
                                               activation_layer=nn.SiLU))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")
        self.out_channels = cout

    def forward(self, input):
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


class MBConvV2(nn.Module):
    """torchvision.models.efficientnet.MBConv with EfficientNetV2's BatchNorm(eps=1e-3)."""

    def __init__(self, cin, cout, expand_ratio, kernel, stride, sd_prob, norm_layer):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expanded = _make_divisible(cin * expand_ratio, 8)
        layers = []
        if expanded != cin:
            layers.append(Conv2dNormActivation(cin, expanded, 1, norm_layer=norm_layer, activation_layer=nn.SiLU))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel, stride, groups=expanded, norm_layer=norm_layer,
                                           activation_layer=nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, cin // 4), activation=partial(nn.SiLU, inplace=True)))
        layers.append(Conv2dNormActivation(expanded, cout, 1, norm_layer=norm_layer, activation_layer=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(sd_prob, "row")

    def forward(self, input):
        result = self.block(input)
        if self.use_res_connect:
            result = self.stochastic_depth(result)
            result += input
        return result


class EfficientNetV2(nn.Module):
    """torchvision efficientnet_v2_s layout: FusedMBConv stages, then MBConv stages; last conv 4x."""

    def __init__(self, num_classes=10, dropout=0.2, stochastic_depth_prob=0.2):
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=1e-03)
        # (block, expand, kernel, stride, cin, cout, layers)
        setting = [(FusedMBConv, 1, 3, 1, 8, 8, 2), (FusedMBConv, 4, 3, 2, 8, 16, 2), (FusedMBConv, 4, 3, 2, 16, 24, 2),
                   (MBConvV2, 4, 3, 2, 24, 32, 2), (MBConvV2, 6, 3, 1, 32, 40, 2)]
        layers = [Conv2dNormActivation(3, 8, 3, 2, norm_layer=norm_layer, activation_layer=nn.SiLU)]
        total = sum(s[-1] for s in setting)
        k = 0
        for block, e, kern, s, cin, cout, n in setting:
            stage = []
            for i in range(n):
                stage.append(block(cin if i == 0 else cout, cout, e, kern, s if i == 0 else 1,
                                   stochastic_depth_prob * k / total, norm_layer))
                k += 1
            layers.append(nn.Sequential(*stage))
        layers.append(Conv2dNormActivation(40, 160, 1, norm_layer=norm_layer, activation_layer=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout, inplace=True), nn.Linear(160, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


@register("efficientnet_v2_s", "efficientnet")
def efficientnet_v2():
    return EfficientNetV2()


# ---------------------------------------------------------------- MobileNetV3-Large
class MobileNetV3Large(nn.Module):
    """torchvision mobilenet_v3_large's inverted residual setting at half width: the first block
    without expansion (a residual with no SE), ReLU blocks with and without SE, then Hardswish ones."""

    def __init__(self, num_classes=10, dropout=0.2):
        super().__init__()
        setting = [(8, 3, 8, 8, False, "RE", 1), (8, 3, 32, 12, False, "RE", 2), (12, 3, 36, 12, False, "RE", 1),
                   (12, 5, 36, 20, True, "RE", 2), (20, 5, 60, 20, True, "RE", 1), (20, 3, 120, 40, False, "HS", 2),
                   (40, 3, 100, 40, False, "HS", 1), (40, 3, 240, 56, True, "HS", 1), (56, 3, 336, 56, True, "HS", 1),
                   (56, 5, 336, 80, True, "HS", 2), (80, 5, 480, 80, True, "HS", 1)]
        layers = [Conv2dNormActivation(3, 8, stride=2, norm_layer=partial(nn.BatchNorm2d, eps=0.001),
                                       activation_layer=nn.Hardswish)]
        layers += [InvertedResidualV3(*s) for s in setting]
        layers.append(Conv2dNormActivation(80, 480, 1, activation_layer=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(480, 128), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=dropout, inplace=True), nn.Linear(128, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


@register("mobilenet_v3_large", "mobilenet", partial(_image, size=64))
def mobilenet_v3_large():
    return MobileNetV3Large()


# ---------------------------------------------------------------- ResNeXt, Wide ResNet
class TVBottleneck(nn.Module):
    """torchvision.models.resnet.Bottleneck with groups and width_per_group."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=nn.BatchNorm2d):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv3(out)
        out = self.bn3(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class TVResNet(nn.Module):
    """torchvision.models.ResNet (groups, width_per_group, norm_layer), three stages."""

    def __init__(self, layers=(1, 1, 1), widths=(8, 16, 32), groups=1, width_per_group=64, num_classes=10,
                 norm_layer=nn.BatchNorm2d):
        super().__init__()
        self._norm_layer = norm_layer
        self.inplanes, self.dilation = widths[0], 1
        self.groups, self.base_width = groups, width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[2] * TVBottleneck.expansion, num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        norm_layer = self._norm_layer
        downsample = None
        if stride != 1 or self.inplanes != planes * TVBottleneck.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * TVBottleneck.expansion, stride),
                                       norm_layer(planes * TVBottleneck.expansion))
        layers = [TVBottleneck(self.inplanes, planes, stride, downsample, self.groups, self.base_width, 1, norm_layer)]
        self.inplanes = planes * TVBottleneck.expansion
        for _ in range(1, blocks):
            layers.append(TVBottleneck(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                       norm_layer=norm_layer))
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


@register("resnext50_32x4d", "resnet")
def resnext50():
    return TVResNet((1, 2, 1), widths=(8, 16, 16), groups=4, width_per_group=32)   # width = 8 per 2 planes x 4 groups


@register("wide_resnet50_2", "resnet")
def wide_resnet50():
    return TVResNet((1, 2, 1), widths=(4, 8, 8), width_per_group=128)             # 3x3 width = 2 x planes


# ---------------------------------------------------------------- AlexNet
class AlexNet(nn.Module):
    """torchvision.models.AlexNet; a 160 x 160 input reaches the 6 x 6 adaptive pool at 4 x 4."""

    def __init__(self, num_classes=10, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(8, 16, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(16, 24, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(24, 16, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(16, 16, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(16 * 6 * 6, 64), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(64, 64), nn.ReLU(inplace=True), nn.Linear(64, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


@register("alexnet", "alexnet", partial(_image, size=160))
def alexnet():
    return AlexNet()


class AdaptivePoolNonDivisible(nn.Module):
    """AdaptiveAvgPool2d((6, 6)) from 7 x 7 and AdaptiveMaxPool2d((3, 3)) from 7 x 7: uneven,
    overlapping windows (AlexNet / VGG heads fed other input sizes)."""

    def __init__(self):
        super().__init__()
        self.stem = Conv2dNormActivation(3, 8, stride=2)
        self.avg = nn.AdaptiveAvgPool2d((6, 6))
        self.max = nn.AdaptiveMaxPool2d((3, 3))
        self.fc = nn.Linear(8 * 36 + 8 * 9, 10)

    def forward(self, x):
        x = self.stem(x)
        return self.fc(torch.cat([torch.flatten(self.avg(x), 1), torch.flatten(self.max(x), 1)], 1))


@register("adaptive_pool_7to6", "alexnet", partial(_image, size=14))
def adaptive_pool_7to6():
    return AdaptivePoolNonDivisible()


# ---------------------------------------------------------------- SSDLite (MobileNetV3 features)
def _extra_block(in_channels, out_channels, norm_layer):
    """torchvision.models.detection.ssdlite._extra_block."""
    activation = nn.ReLU6
    intermediate_channels = out_channels // 2
    return nn.Sequential(
        Conv2dNormActivation(in_channels, intermediate_channels, kernel_size=1, norm_layer=norm_layer,
                             activation_layer=activation),
        Conv2dNormActivation(intermediate_channels, intermediate_channels, kernel_size=3, stride=2,
                             groups=intermediate_channels, norm_layer=norm_layer, activation_layer=activation),
        Conv2dNormActivation(intermediate_channels, out_channels, kernel_size=1, norm_layer=norm_layer,
                             activation_layer=activation))


def _prediction_block(in_channels, out_channels, kernel_size, norm_layer):
    return nn.Sequential(
        Conv2dNormActivation(in_channels, in_channels, kernel_size=kernel_size, groups=in_channels,
                             norm_layer=norm_layer, activation_layer=nn.ReLU6),
        nn.Conv2d(in_channels, out_channels, 1))


class SSDScoringHead(nn.Module):
    def __init__(self, module_list, num_columns):
        super().__init__()
        self.module_list = module_list
        self.num_columns = num_columns

    def forward(self, x):
        all_results = []
        for i, features in enumerate(x):
            results = self.module_list[i](features)
            N, _, H, W = results.shape
            results = results.view(N, -1, self.num_columns, H, W)
            results = results.permute(0, 3, 4, 1, 2)
            results = results.reshape(N, -1, self.num_columns)
            all_results.append(results)
        return torch.cat(all_results, dim=1)


class SSDLite(nn.Module):
    """torchvision ssdlite320_mobilenet_v3_large without the anchor matching / postprocess: the
    MobileNetV3 trunk split at C4, extra blocks, per-level classification and regression heads."""

    def __init__(self, num_classes=5, num_anchors=(6, 6, 6, 6)):
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
        setting = [(8, 3, 8, 8, False, "RE", 1), (8, 3, 32, 12, False, "RE", 2), (12, 5, 36, 20, True, "RE", 2),
                   (20, 3, 60, 20, False, "HS", 1), (20, 3, 80, 32, True, "HS", 2), (32, 5, 96, 32, True, "HS", 1)]
        stem = Conv2dNormActivation(3, 8, stride=2, norm_layer=norm_layer, activation_layer=nn.Hardswish)
        blocks = [InvertedResidualV3(*s) for s in setting]
        self.c4 = nn.Sequential(stem, *blocks[:4])          # stride 8
        self.c5 = nn.Sequential(*blocks[4:], Conv2dNormActivation(32, 96, 1, norm_layer=norm_layer,
                                                                  activation_layer=nn.Hardswish))   # stride 16
        self.extra = nn.ModuleList([_extra_block(96, 64, norm_layer), _extra_block(64, 32, norm_layer)])
        out_channels = [20, 96, 64, 32]
        cls = nn.ModuleList(_prediction_block(c, num_classes * a, 3, norm_layer)
                            for c, a in zip(out_channels, num_anchors))
        reg = nn.ModuleList(_prediction_block(c, 4 * a, 3, norm_layer) for c, a in zip(out_channels, num_anchors))
        self.classification_head = SSDScoringHead(cls, num_classes)
        self.regression_head = SSDScoringHead(reg, 4)

    def forward(self, x):
        c4 = self.c4(x)
        output = [c4, self.c5(c4)]
        for block in self.extra:
            output.append(block(output[-1]))
        return {"bbox_regression": self.regression_head(output), "cls_logits": self.classification_head(output)}


@register("ssdlite_mobilenet_v3", "detection", partial(_image, size=64))
def ssdlite():
    return SSDLite()


# ---------------------------------------------------------------- Faster R-CNN: FrozenBN ResNet, FPN, RPN head
class FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.misc.FrozenBatchNorm2d (buffers set to trained-like values here)."""

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.eps = eps
        g = torch.Generator().manual_seed(num_features)
        self.register_buffer("weight", 0.6 + 0.8 * torch.rand(num_features, generator=g))
        self.register_buffer("bias", 0.2 * torch.randn(num_features, generator=g))
        self.register_buffer("running_mean", 0.2 * torch.randn(num_features, generator=g))
        self.register_buffer("running_var", 0.5 + torch.rand(num_features, generator=g))

    def forward(self, x):
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        bias = b - rm * scale
        return x * scale + bias


class FeaturePyramidNetwork(nn.Module):
    """torchvision.ops.FeaturePyramidNetwork with LastLevelMaxPool."""

    def __init__(self, in_channels_list, out_channels):
        super().__init__()
        self.inner_blocks = nn.ModuleList(Conv2dNormActivation(c, out_channels, 1, norm_layer=None, activation_layer=None)
                                          for c in in_channels_list)
        self.layer_blocks = nn.ModuleList(Conv2dNormActivation(out_channels, out_channels, 3, norm_layer=None,
                                                               activation_layer=None) for _ in in_channels_list)

    def forward(self, x):
        names = list(x.keys())
        x = list(x.values())
        last_inner = self.inner_blocks[-1](x[-1])
        results = [self.layer_blocks[-1](last_inner)]
        for idx in range(len(x) - 2, -1, -1):
            inner_lateral = self.inner_blocks[idx](x[idx])
            feat_shape = inner_lateral.shape[-2:]
            inner_top_down = F.interpolate(last_inner, size=feat_shape, mode="nearest")
            last_inner = inner_lateral + inner_top_down
            results.insert(0, self.layer_blocks[idx](last_inner))
        names.append("pool")
        results.append(F.max_pool2d(results[-1], 1, 2, 0))      # LastLevelMaxPool
        return OrderedDict((k, v) for k, v in zip(names, results))


class RPNHead(nn.Module):
    def __init__(self, in_channels, num_anchors, conv_depth=1):
        super().__init__()
        self.conv = nn.Sequential(*[Conv2dNormActivation(in_channels, in_channels, kernel_size=3, norm_layer=None)
                                    for _ in range(conv_depth)])
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, kernel_size=1, stride=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=1, stride=1)

    def forward(self, x):
        logits, bbox_reg = [], []
        for feature in x:
            t = self.conv(feature)
            logits.append(self.cls_logits(t))
            bbox_reg.append(self.bbox_pred(t))
        return logits, bbox_reg


def permute_and_flatten(layer, N, A, C, H, W):
    layer = layer.view(N, -1, C, H, W)
    layer = layer.permute(0, 3, 4, 1, 2)
    return layer.reshape(N, -1, C)


def concat_box_prediction_layers(box_cls, box_regression):
    box_cls_flattened, box_regression_flattened = [], []
    for box_cls_per_level, box_regression_per_level in zip(box_cls, box_regression):
        N, AxC, H, W = box_cls_per_level.shape
        Ax4 = box_regression_per_level.shape[1]
        A = Ax4 // 4
        C = AxC // A
        box_cls_flattened.append(permute_and_flatten(box_cls_per_level, N, A, C, H, W))
        box_regression_flattened.append(permute_and_flatten(box_regression_per_level, N, A, 4, H, W))
    box_cls = torch.cat(box_cls_flattened, dim=1).flatten(0, -2)
    box_regression = torch.cat(box_regression_flattened, dim=1).reshape(-1, 4)
    return box_cls, box_regression


def _rpn_anchors(sizes, strides, feat_sizes, ratios=(0.5, 1.0, 2.0)):
    """torchvision AnchorGenerator's anchors for one image (cell anchors shifted over the grid)."""
    out = []
    for size, stride, (h, w) in zip(sizes, strides, feat_sizes):
        scales = torch.as_tensor([size], dtype=torch.float32)
        aspect_ratios = torch.as_tensor(ratios)
        h_ratios = torch.sqrt(aspect_ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        base = (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()
        sx = torch.arange(0, w, dtype=torch.float32) * stride
        sy = torch.arange(0, h, dtype=torch.float32) * stride
        shift_y, shift_x = torch.meshgrid(sy, sx, indexing="ij")
        shifts = torch.stack((shift_x.reshape(-1), shift_y.reshape(-1), shift_x.reshape(-1), shift_y.reshape(-1)), 1)
        out.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4)).reshape(-1, 4))
    return torch.cat(out)


def decode_single(rel_codes, boxes, weights=(1.0, 1.0, 1.0, 1.0), bbox_xform_clip=math.log(1000.0 / 16)):
    """torchvision.models.detection._utils.BoxCoder.decode_single."""
    boxes = boxes.to(rel_codes.dtype)
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx = rel_codes[:, 0::4] / wx
    dy = rel_codes[:, 1::4] / wy
    dw = rel_codes[:, 2::4] / ww
    dh = rel_codes[:, 3::4] / wh
    dw = torch.clamp(dw, max=bbox_xform_clip)
    dh = torch.clamp(dh, max=bbox_xform_clip)
    pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
    pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
    pred_w = torch.exp(dw) * widths[:, None]
    pred_h = torch.exp(dh) * heights[:, None]
    c_to_c_h = torch.tensor(0.5, dtype=pred_ctr_y.dtype, device=pred_h.device) * pred_h
    c_to_c_w = torch.tensor(0.5, dtype=pred_ctr_x.dtype, device=pred_w.device) * pred_w
    pred_boxes1 = pred_ctr_x - c_to_c_w
    pred_boxes2 = pred_ctr_y - c_to_c_h
    pred_boxes3 = pred_ctr_x + c_to_c_w
    pred_boxes4 = pred_ctr_y + c_to_c_h
    return torch.stack((pred_boxes1, pred_boxes2, pred_boxes3, pred_boxes4), dim=2).flatten(1)


class FasterRCNNRPN(nn.Module):
    """fasterrcnn_resnet50_fpn up to the region proposals: a FrozenBatchNorm ResNet body, the FPN with
    its max-pool level, the RPN head on every level, concat_box_prediction_layers, objectness
    sigmoid and BoxCoder.decode against the (fixed) anchors. No top-k / NMS / ROI ops."""

    def __init__(self, size=64):
        super().__init__()
        self.body = TVResNet((1, 1, 1), widths=(4, 8, 16), norm_layer=FrozenBatchNorm2d)
        self.fpn = FeaturePyramidNetwork([32, 64, 64], 16)
        self.rpn_head = RPNHead(16, 3)
        strides = (8, 16, 32, 64)
        feats = [(size // s, size // s) for s in strides]
        self.register_buffer("anchors", _rpn_anchors((16, 32, 64, 128), strides, feats))

    def forward(self, images):
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))
        feats = OrderedDict()
        x = b.layer1(x)
        feats["0"] = x = b.layer2(x)      # stride 8
        feats["1"] = x = b.layer3(x)      # stride 16
        feats["2"] = F.max_pool2d(x, 2)   # stride 32
        features = list(self.fpn(feats).values())
        objectness, pred_bbox_deltas = self.rpn_head(features)
        num_images = images.shape[0]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        anchors = self.anchors.repeat(num_images, 1)
        proposals = decode_single(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
        return objectness.view(num_images, -1).sigmoid(), proposals


@register("fasterrcnn_fpn_rpn", "detection", partial(_image, size=64))
def fasterrcnn_rpn():
    return FasterRCNNRPN()


# ---------------------------------------------------------------- MaxViT
def _get_relative_position_index(height, width):
    coords = torch.stack(torch.meshgrid([torch.arange(height), torch.arange(width)], indexing="ij"))
    coords_flat = torch.flatten(coords, 1)
    relative_coords = coords_flat[:, :, None] - coords_flat[:, None, :]
    relative_coords = relative_coords.permute(1, 2, 0).contiguous()
    relative_coords[:, :, 0] += height - 1
    relative_coords[:, :, 1] += width - 1
    relative_coords[:, :, 0] *= 2 * width - 1
    return relative_coords.sum(-1)


class TVConv2dNormActivation(nn.Sequential):
    """torchvision Conv2dNormActivation where ``inplace=None`` passes no inplace argument."""

    def __init__(self, cin, cout, kernel_size=3, stride=1, groups=1, norm_layer=nn.BatchNorm2d,
                 activation_layer=nn.ReLU, inplace=True, bias=None):
        padding = (kernel_size - 1) // 2
        if bias is None:
            bias = norm_layer is None
        layers = [nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=bias)]
        if norm_layer is not None:
            layers.append(norm_layer(cout))
        if activation_layer is not None:
            params = {} if inplace is None else {"inplace": inplace}
            layers.append(activation_layer(**params))
        super().__init__(*layers)


class MaxVitMBConv(nn.Module):
    """torchvision.models.maxvit.MBConv (pre-norm BN, GELU, SE with SiLU, avg-pool projection)."""

    def __init__(self, in_channels, out_channels, expansion_ratio, squeeze_ratio, stride, activation_layer,
                 norm_layer, p_stochastic_dropout=0.0):
        super().__init__()
        should_proj = stride != 1 or in_channels != out_channels
        if should_proj:
            proj = [nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, bias=True)]
            if stride == 2:
                proj = [nn.AvgPool2d(kernel_size=3, stride=stride, padding=1)] + proj
            self.proj = nn.Sequential(*proj)
        else:
            self.proj = nn.Identity()
        mid_channels = int(out_channels * expansion_ratio)
        sqz_channels = int(out_channels * squeeze_ratio)
        self.stochastic_depth = StochasticDepth(p_stochastic_dropout, mode="row") if p_stochastic_dropout else nn.Identity()
        _layers = OrderedDict()
        _layers["pre_norm"] = norm_layer(in_channels)
        _layers["conv_a"] = TVConv2dNormActivation(in_channels, mid_channels, kernel_size=1, stride=1,
                                                 activation_layer=activation_layer, norm_layer=norm_layer, inplace=None)
        _layers["conv_b"] = TVConv2dNormActivation(mid_channels, mid_channels, kernel_size=3, stride=stride,
                                                 activation_layer=activation_layer, norm_layer=norm_layer,
                                                 groups=mid_channels, inplace=None)
        _layers["squeeze_excitation"] = SqueezeExcitation(mid_channels, sqz_channels, activation=nn.SiLU)
        _layers["conv_c"] = nn.Conv2d(mid_channels, out_channels, kernel_size=1, bias=True)
        self.layers = nn.Sequential(_layers)

    def forward(self, x):
        res = self.proj(x)
        x = self.stochastic_depth(self.layers(x))
        return res + x


class RelativePositionalMultiHeadAttention(nn.Module):
    def __init__(self, feat_dim, head_dim, max_seq_len):
        super().__init__()
        self.n_heads = feat_dim // head_dim
        self.head_dim = head_dim
        self.size = int(math.sqrt(max_seq_len))
        self.max_seq_len = max_seq_len
        self.to_qkv = nn.Linear(feat_dim, self.n_heads * self.head_dim * 3)
        self.scale_factor = feat_dim ** -0.5
        self.merge = nn.Linear(self.head_dim * self.n_heads, feat_dim)
        self.relative_position_bias_table = nn.Parameter(
            0.02 * torch.randn(((2 * self.size - 1) * (2 * self.size - 1), self.n_heads), dtype=torch.float32))
        self.register_buffer("relative_position_index", _get_relative_position_index(self.size, self.size))

    def get_relative_positional_bias(self):
        bias_index = self.relative_position_index.view(-1)
        relative_bias = self.relative_position_bias_table[bias_index].view(self.max_seq_len, self.max_seq_len, -1)
        relative_bias = relative_bias.permute(2, 0, 1).contiguous()
        return relative_bias.unsqueeze(0)

    def forward(self, x):
        B, G, P, D = x.shape
        H, DH = self.n_heads, self.head_dim
        qkv = self.to_qkv(x)
        q, k, v = torch.chunk(qkv, 3, dim=-1)
        q = q.reshape(B, G, P, H, DH).permute(0, 1, 3, 2, 4)
        k = k.reshape(B, G, P, H, DH).permute(0, 1, 3, 2, 4)
        v = v.reshape(B, G, P, H, DH).permute(0, 1, 3, 2, 4)
        k = k * self.scale_factor
        dot_prod = torch.einsum("B G H I D, B G H J D -> B G H I J", q, k)
        pos_bias = self.get_relative_positional_bias()
        dot_prod = F.softmax(dot_prod + pos_bias, dim=-1)
        out = torch.einsum("B G H I J, B G H J D -> B G H I D", dot_prod, v)
        out = out.permute(0, 1, 3, 2, 4).reshape(B, G, P, D)
        return self.merge(out)


class SwapAxes(nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, x):
        return torch.swapaxes(x, self.a, self.b)


class WindowPartition(nn.Module):
    def forward(self, x, p):
        B, C, H, W = x.shape
        P = p
        x = x.reshape(B, C, H // P, P, W // P, P)
        x = x.permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, (H // P) * (W // P), P * P, C)


class WindowDepartition(nn.Module):
    def forward(self, x, p, h_partitions, w_partitions):
        B, G, PP, C = x.shape
        P = p
        HP, WP = h_partitions, w_partitions
        x = x.reshape(B, HP, WP, P, P, C)
        x = x.permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, C, HP * P, WP * P)


class PartitionAttentionLayer(nn.Module):
    def __init__(self, in_channels, head_dim, partition_size, partition_type, grid_size, mlp_ratio,
                 activation_layer, norm_layer, attention_dropout, mlp_dropout, p_stochastic_dropout):
        super().__init__()
        self.n_heads = in_channels // head_dim
        self.head_dim = head_dim
        self.n_partitions = grid_size[0] // partition_size
        self.partition_type = partition_type
        self.grid_size = grid_size
        if partition_type == "window":
            self.p, self.g = partition_size, self.n_partitions
        else:
            self.p, self.g = self.n_partitions, partition_size
        self.partition_op = WindowPartition()
        self.departition_op = WindowDepartition()
        self.partition_swap = SwapAxes(-2, -3) if partition_type == "grid" else nn.Identity()
        self.departition_swap = SwapAxes(-2, -3) if partition_type == "grid" else nn.Identity()
        self.attn_layer = nn.Sequential(norm_layer(in_channels),
                                        RelativePositionalMultiHeadAttention(in_channels, head_dim, partition_size ** 2),
                                        nn.Dropout(attention_dropout))
        self.mlp_layer = nn.Sequential(nn.LayerNorm(in_channels), nn.Linear(in_channels, in_channels * mlp_ratio),
                                       activation_layer(), nn.Linear(in_channels * mlp_ratio, in_channels),
                                       nn.Dropout(mlp_dropout))
        self.stochastic_dropout = StochasticDepth(p_stochastic_dropout, mode="row")

    def forward(self, x):
        gh, gw = self.grid_size[0] // self.p, self.grid_size[1] // self.p
        x = self.partition_op(x, self.p)
        x = self.partition_swap(x)
        x = x + self.stochastic_dropout(self.attn_layer(x))
        x = x + self.stochastic_dropout(self.mlp_layer(x))
        x = self.departition_swap(x)
        return self.departition_op(x, self.p, gh, gw)


class MaxVit(nn.Module):
    """torchvision.models.MaxVit: conv stem, one MaxVitLayer (MBConv, window and grid attention)."""

    def __init__(self, num_classes=10, dim=32, head_dim=16, partition_size=4):
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)
        self.stem = nn.Sequential(
            TVConv2dNormActivation(3, 16, 3, stride=2, norm_layer=norm_layer, activation_layer=nn.GELU, bias=False,
                                 inplace=None),
            TVConv2dNormActivation(16, 16, 3, stride=1, norm_layer=None, activation_layer=None, bias=True))
        grid = (IMG // 4, IMG // 4)
        layers = OrderedDict()
        layers["MBconv"] = MaxVitMBConv(16, dim, 4, 0.25, 2, nn.GELU, norm_layer, 0.1)
        layers["window_attention"] = PartitionAttentionLayer(dim, head_dim, partition_size, "window", grid, 4, nn.GELU,
                                                             nn.LayerNorm, 0.0, 0.0, 0.1)
        layers["grid_attention"] = PartitionAttentionLayer(dim, head_dim, partition_size, "grid", grid, 4, nn.GELU,
                                                           nn.LayerNorm, 0.0, 0.0, 0.1)
        self.blocks = nn.Sequential(layers)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(dim), nn.Linear(dim, dim),
                                        nn.Tanh(), nn.Linear(dim, num_classes, bias=False))

    def forward(self, x):
        return self.classifier(self.blocks(self.stem(x)))


@register("maxvit", "vit")
def maxvit():
    return MaxVit()


# ---------------------------------------------------------------- Swin V2 (torchvision)
def shifted_window_attention_v2(input, qkv_weight, proj_weight, relative_position_bias, window_size, num_heads,
                                shift_size, attention_dropout=0.0, dropout=0.0, qkv_bias=None, proj_bias=None,
                                logit_scale=None, training=True):
    """torchvision.models.swin_transformer.shifted_window_attention with logit_scale (V2)."""
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
    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = qkv_bias.clone()
        length = qkv_bias.numel() // 3
        qkv_bias[length: 2 * length].zero_()
    qkv = F.linear(x, qkv_weight, qkv_bias)
    qkv = qkv.reshape(x.size(0), x.size(1), 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logit_scale = torch.clamp(logit_scale, max=math.log(100.0)).exp()
        attn = attn * logit_scale
    else:
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


class ShiftedWindowAttentionV2(nn.Module):
    def __init__(self, dim, window_size, shift_size, num_heads, qkv_bias=True, proj_bias=True):
        super().__init__()
        self.window_size, self.shift_size, self.num_heads = window_size, shift_size, num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((num_heads, 1, 1))))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 64, bias=True), nn.ReLU(inplace=True),
                                     nn.Linear(64, num_heads, bias=False))
        if qkv_bias:
            length = self.qkv.bias.numel() // 3
            self.qkv.bias[length: 2 * length].data.zero_()
        relative_coords_h = torch.arange(-(window_size[0] - 1), window_size[0], dtype=torch.float32)
        relative_coords_w = torch.arange(-(window_size[1] - 1), window_size[1], dtype=torch.float32)
        relative_coords_table = torch.stack(torch.meshgrid([relative_coords_h, relative_coords_w], indexing="ij"))
        relative_coords_table = relative_coords_table.permute(1, 2, 0).contiguous().unsqueeze(0)
        relative_coords_table[:, :, :, 0] /= window_size[0] - 1
        relative_coords_table[:, :, :, 1] /= window_size[1] - 1
        relative_coords_table *= 8
        relative_coords_table = (torch.sign(relative_coords_table) * torch.log2(torch.abs(relative_coords_table) + 1.0)
                                 / 3.0)
        self.register_buffer("relative_coords_table", relative_coords_table)
        self.register_buffer("relative_position_index", _get_relative_position_index(*window_size).flatten())

    def get_relative_position_bias(self):
        n = self.window_size[0] * self.window_size[1]
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        bias = table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)
        return 16 * torch.sigmoid(bias)

    def forward(self, x):
        return shifted_window_attention_v2(x, self.qkv.weight, self.proj.weight, self.get_relative_position_bias(),
                                           self.window_size, self.num_heads, shift_size=self.shift_size,
                                           qkv_bias=self.qkv.bias, proj_bias=self.proj.bias,
                                           logit_scale=self.logit_scale, training=self.training)


class SwinTransformerBlockV2(SwinBlock):
    """Res-post-norm: x + sd(norm1(attn(x))) (torchvision subclasses the V1 block the same way)."""

    def __init__(self, dim, heads, window_size, shift_size, sd_prob=0.1):
        super().__init__(dim, heads, window_size, shift_size, sd_prob, attn_layer=ShiftedWindowAttentionV2)

    def forward(self, x):
        x = x + self.stochastic_depth(self.norm1(self.attn(x)))
        x = x + self.stochastic_depth(self.norm2(self.mlp(x)))
        return x


class PatchMergingV2(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x):
        H, W, _ = x.shape[-3:]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x0, x1 = x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :]
        x2, x3 = x[..., 0::2, 1::2, :], x[..., 1::2, 1::2, :]
        x = torch.cat([x0, x1, x2, x3], -1)
        return self.norm(self.reduction(x))


@register("swin_v2_t", "swin")
def swin_v2():
    return SwinTransformer(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2)


# ---------------------------------------------------------------- ViT (torchvision, Encoder module)
class Encoder(nn.Module):
    """torchvision.models.vision_transformer.Encoder."""

    def __init__(self, seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        layers = OrderedDict()
        for i in range(num_layers):
            layers[f"encoder_layer_{i}"] = EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout)
        self.layers = nn.Sequential(layers)
        self.ln = nn.LayerNorm(hidden_dim, eps=1e-6)

    def forward(self, input):
        torch._assert(input.dim() == 3, f"Expected (batch_size, seq_length, hidden_dim) got {input.shape}")
        input = input + self.pos_embedding
        return self.ln(self.layers(self.dropout(input)))


class TVVisionTransformer(nn.Module):
    def __init__(self, image_size=IMG, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                 dropout=0.0, attention_dropout=0.0, num_classes=10):
        super().__init__()
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        seq_length = (image_size // patch_size) ** 2
        self.class_token = nn.Parameter(0.02 * torch.randn(1, 1, hidden_dim))
        seq_length += 1
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout)
        self.seq_length = seq_length
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

    def _process_input(self, x):
        n, c, h, w = x.shape
        p = self.patch_size
        torch._assert(h == self.image_size, f"Wrong image height! Expected {self.image_size} but got {h}!")
        n_h, n_w = h // p, w // p
        x = self.conv_proj(x)
        x = x.reshape(n, self.hidden_dim, n_h * n_w)
        return x.permute(0, 2, 1)

    def forward(self, x):
        x = self._process_input(x)
        n = x.shape[0]
        batch_class_token = self.class_token.expand(n, -1, -1)
        x = torch.cat([batch_class_token, x], dim=1)
        x = self.encoder(x)
        x = x[:, 0]
        return self.heads(x)


@register("vit_b_16_torchvision", "vit")
def vit_torchvision():
    return TVVisionTransformer()


# ================================================================ ultralytics
class Focus(nn.Module):
    """yolov5 models.common.Focus: space-to-depth by strided slicing, then a conv."""

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, act=True):
        super().__init__()
        self.conv = YConv(c1 * 4, c2, k, s, p, g, act=act)

    def forward(self, x):
        return self.conv(torch.cat((x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), 1))


class V5Bottleneck(nn.Module):
    def __init__(self, c1, c2, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = YConv(c1, c_, 1, 1)
        self.cv2 = YConv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    """yolov5 models.common.C3."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = YConv(c1, c_, 1, 1)
        self.cv2 = YConv(c1, c_, 1, 1)
        self.cv3 = YConv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(V5Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class V5SPPF(nn.Module):
    def __init__(self, c1, c2, k=5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = YConv(c1, c_, 1, 1)
        self.cv2 = YConv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class V5Detect(nn.Module):
    """yolov5 models.yolo.Detect in inference: sigmoid, split, grid / anchor_grid decoding."""
    stride = None
    dynamic = False
    export = True

    def __init__(self, nc=4, anchors=(), ch=(), stride=(8, 16, 32)):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.grid = [torch.empty(0) for _ in range(self.nl)]
        self.anchor_grid = [torch.empty(0) for _ in range(self.nl)]
        self.stride = torch.tensor(stride, dtype=torch.float)
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2) / self.stride.view(-1, 1, 1))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)

    def forward(self, x):
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                if self.dynamic or self.grid[i].shape[2:4] != x[i].shape[2:4]:
                    self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
                xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + self.grid[i]) * self.stride[i]
                wh = (wh * 2) ** 2 * self.anchor_grid[i]
                y = torch.cat((xy, wh, conf), 4)
                z.append(y.view(bs, self.na * nx * ny, self.no))
        return x if self.training else (torch.cat(z, 1),) if self.export else (torch.cat(z, 1), x)

    def _make_grid(self, nx=20, ny=20, i=0):
        d = self.anchors[i].device
        t = self.anchors[i].dtype
        shape = 1, self.na, ny, nx, 2
        y, x = torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t)
        yv, xv = torch.meshgrid(y, x, indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


class YOLOv5(nn.Module):
    """yolov5s.yaml (v6.0 head) at tiny width: stem (Focus, or the 6x6 stride-2 conv of v6.0), C3,
    SPPF, PANet head with nearest upsampling, Detect."""

    def __init__(self, focus=False, nc=4):
        super().__init__()
        self.b0 = Focus(3, 8, 3) if focus else YConv(3, 8, 6, 2, 2)
        self.b1, self.b2 = YConv(8, 16, 3, 2), C3(16, 16, 1)
        self.b3, self.b4 = YConv(16, 32, 3, 2), C3(32, 32, 2)
        self.b5, self.b6 = YConv(32, 48, 3, 2), C3(48, 48, 1)
        self.b7, self.b8 = YConv(48, 64, 3, 2), C3(64, 64, 1)
        self.b9 = V5SPPF(64, 64, 5)
        self.h10, self.up = YConv(64, 48, 1, 1), nn.Upsample(None, 2, "nearest")
        self.h13 = C3(96, 48, 1, False)
        self.h14 = YConv(48, 32, 1, 1)
        self.h17 = C3(64, 32, 1, False)
        self.h18, self.h20 = YConv(32, 32, 3, 2), C3(64, 48, 1, False)
        self.h21, self.h23 = YConv(48, 48, 3, 2), C3(96, 64, 1, False)
        anchors = ([10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326])
        self.detect = V5Detect(nc, anchors, (32, 48, 64))

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b9(self.b8(self.b7(p4)))
        h10 = self.h10(p5)
        h13 = self.h13(torch.cat([self.up(h10), p4], 1))
        h14 = self.h14(h13)
        h17 = self.h17(torch.cat([self.up(h14), p3], 1))
        h20 = self.h20(torch.cat([self.h18(h17), h14], 1))
        h23 = self.h23(torch.cat([self.h21(h20), h10], 1))
        return self.detect([h17, h20, h23])[0]


@register("yolov5s_v6", "detection", partial(_image, size=64))
def yolov5s_v6():
    return YOLOv5(focus=False)


@register("yolov5s_focus", "detection", partial(_image, size=64))
def yolov5s_focus():
    return YOLOv5(focus=True)


# ---------------------------------------------------------------- YOLOv8-seg
class Proto(nn.Module):
    """ultralytics Proto: conv, ConvTranspose2d x2 upsampling, convs."""

    def __init__(self, c1, c_=256, c2=32):
        super().__init__()
        self.cv1 = YConv(c1, c_, k=3)
        self.upsample = nn.ConvTranspose2d(c_, c_, 2, 2, 0, bias=True)
        self.cv2 = YConv(c_, c_, k=3)
        self.cv3 = YConv(c_, c2)

    def forward(self, x):
        return self.cv3(self.cv2(self.upsample(self.cv1(x))))


class Segment(Detect):
    """ultralytics Segment (export form): detections with mask coefficients, and the prototypes."""

    def __init__(self, nc=4, nm=8, npr=16, ch=()):
        super().__init__(nc, ch)
        self.nm, self.npr = nm, npr
        self.proto = Proto(ch[0], self.npr, self.nm)
        c4 = max(ch[0] // 4, self.nm)
        self.cv4 = nn.ModuleList(nn.Sequential(YConv(x, c4, 3), YConv(c4, c4, 3), nn.Conv2d(c4, self.nm, 1)) for x in ch)

    def forward(self, x):
        p = self.proto(x[0])
        bs = p.shape[0]
        mc = torch.cat([self.cv4[i](x[i]).view(bs, self.nm, -1) for i in range(self.nl)], 2)
        x = Detect.forward(self, x)
        return torch.cat([x, mc], 1), p


class YOLOv8Seg(YOLOv8):
    def __init__(self):
        super().__init__()
        self.detect = Segment(4, 8, 16, (16, 32, 32))


@register("yolov8n_seg", "detection", partial(_image, size=64))
def yolov8_seg():
    return YOLOv8Seg()


# ---------------------------------------------------------------- YOLO11: C3k2, C2PSA, DWConv Detect
class UC3(nn.Module):
    """ultralytics C3 (Bottleneck k=((1, 1), (3, 3)))."""

    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = YConv(c1, c_, 1, 1)
        self.cv2 = YConv(c1, c_, 1, 1)
        self.cv3 = YConv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(YBottleneck(c_, c_, shortcut, g, k=(1, 3), e=1.0) for _ in range(n)))   # k=((1, 1), (3, 3))

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class C3k(UC3):
    def __init__(self, c1, c2, n=1, shortcut=True, g=1, e=0.5, k=3):
        super().__init__(c1, c2, n, shortcut, g, e)
        c_ = int(c2 * e)
        self.m = nn.Sequential(*(YBottleneck(c_, c_, shortcut, g, k=(k, k), e=1.0) for _ in range(n)))


class C3k2(C2f):
    def __init__(self, c1, c2, n=1, c3k=False, e=0.5, g=1, shortcut=True):
        super().__init__(c1, c2, n, shortcut, g, e)
        self.m = nn.ModuleList(C3k(self.c, self.c, 2, shortcut, g) if c3k else YBottleneck(self.c, self.c, shortcut, g)
                               for _ in range(n))


class UAttention(nn.Module):
    """ultralytics.nn.modules.block.Attention: qkv conv, view + split, softmax, positional dwconv."""

    def __init__(self, dim, num_heads=8, attn_ratio=0.5):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim ** -0.5
        nh_kd = self.key_dim * num_heads
        h = dim + nh_kd * 2
        self.qkv = YConv(dim, h, 1, act=False)
        self.proj = YConv(dim, dim, 1, act=False)
        self.pe = YConv(dim, dim, 3, 1, g=dim, act=False)

    def forward(self, x):
        B, C, H, W = x.shape
        N = H * W
        qkv = self.qkv(x)
        q, k, v = qkv.view(B, self.num_heads, self.key_dim * 2 + self.head_dim, N).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = (q.transpose(-2, -1) @ k) * self.scale
        attn = attn.softmax(dim=-1)
        x = (v @ attn.transpose(-2, -1)).view(B, C, H, W) + self.pe(v.reshape(B, C, H, W))
        return self.proj(x)


class PSABlock(nn.Module):
    def __init__(self, c, attn_ratio=0.5, num_heads=4, shortcut=True):
        super().__init__()
        self.attn = UAttention(c, attn_ratio=attn_ratio, num_heads=num_heads)
        self.ffn = nn.Sequential(YConv(c, c * 2, 1), YConv(c * 2, c, 1, act=False))
        self.add = shortcut

    def forward(self, x):
        x = x + self.attn(x) if self.add else self.attn(x)
        x = x + self.ffn(x) if self.add else self.ffn(x)
        return x


class C2PSA(nn.Module):
    def __init__(self, c1, c2, n=1, e=0.5):
        super().__init__()
        assert c1 == c2
        self.c = int(c1 * e)
        self.cv1 = YConv(c1, 2 * self.c, 1, 1)
        self.cv2 = YConv(2 * self.c, c1, 1)
        self.m = nn.Sequential(*(PSABlock(self.c, attn_ratio=0.5, num_heads=self.c // 64) for _ in range(n)))

    def forward(self, x):
        a, b = self.cv1(x).split((self.c, self.c), dim=1)
        b = self.m(b)
        return self.cv2(torch.cat((a, b), 1))


class DWConv(YConv):
    def __init__(self, c1, c2, k=1, s=1, d=1, act=True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), d=d, act=act)


class Detect11(Detect):
    """YOLO11's Detect: the classification branch with depthwise convs."""

    def __init__(self, nc=4, ch=()):
        super().__init__(nc, ch)
        c3 = max(ch[0], min(self.nc, 100))
        self.cv3 = nn.ModuleList(nn.Sequential(nn.Sequential(DWConv(x, x, 3), YConv(x, c3, 1)),
                                               nn.Sequential(DWConv(c3, c3, 3), YConv(c3, c3, 1)),
                                               nn.Conv2d(c3, self.nc, 1)) for x in ch)


class YOLO11(nn.Module):
    """yolo11n.yaml at tiny width (C2PSA at 128 channels: one head of 64, as num_heads = c // 64)."""

    def __init__(self):
        super().__init__()
        self.b0, self.b1 = YConv(3, 16, 3, 2), YConv(16, 32, 3, 2)
        self.b2 = C3k2(32, 32, 1, False, 0.25)
        self.b3, self.b4 = YConv(32, 32, 3, 2), C3k2(32, 64, 1, False, 0.25)
        self.b5, self.b6 = YConv(64, 64, 3, 2), C3k2(64, 64, 1, True)
        self.b7, self.b8 = YConv(64, 128, 3, 2), C3k2(128, 128, 1, True)
        self.b9 = SPPF(128, 128, 5)
        self.b10 = C2PSA(128, 128, 1)
        self.up = nn.Upsample(None, 2, "nearest")
        self.h13 = C3k2(192, 64, 1, False)
        self.h16 = C3k2(128, 32, 1, False)
        self.h17, self.h19 = YConv(32, 32, 3, 2), C3k2(96, 64, 1, False)
        self.h20, self.h22 = YConv(64, 64, 3, 2), C3k2(192, 128, 1, True)
        self.detect = Detect11(4, (32, 64, 128))

    def forward(self, x):
        p3 = self.b4(self.b3(self.b2(self.b1(self.b0(x)))))
        p4 = self.b6(self.b5(p3))
        p5 = self.b10(self.b9(self.b8(self.b7(p4))))
        h13 = self.h13(torch.cat([self.up(p5), p4], 1))
        h16 = self.h16(torch.cat([self.up(h13), p3], 1))
        h19 = self.h19(torch.cat([self.h17(h16), h13], 1))
        h22 = self.h22(torch.cat([self.h20(h19), p5], 1))
        return self.detect([h16, h19, h22])


@register("yolo11n_c3k2_c2psa", "detection", partial(_image, size=64))
def yolo11():
    return YOLO11()


# ---------------------------------------------------------------- RT-DETR hybrid encoder (AIFI + CCFM)
class TransformerEncoderLayer(nn.Module):
    """ultralytics.nn.modules.transformer.TransformerEncoderLayer (post-norm)."""

    def __init__(self, c1, cm=2048, num_heads=8, dropout=0.0, act=nn.GELU(), normalize_before=False):
        super().__init__()
        self.ma = nn.MultiheadAttention(c1, num_heads, dropout=dropout, batch_first=True)
        self.fc1 = nn.Linear(c1, cm)
        self.fc2 = nn.Linear(cm, c1)
        self.norm1 = nn.LayerNorm(c1)
        self.norm2 = nn.LayerNorm(c1)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.act = act
        self.normalize_before = normalize_before

    @staticmethod
    def with_pos_embed(tensor, pos=None):
        return tensor if pos is None else tensor + pos

    def forward(self, src, src_mask=None, src_key_padding_mask=None, pos=None):
        q = k = self.with_pos_embed(src, pos)
        src2 = self.ma(q, k, value=src, attn_mask=src_mask, key_padding_mask=src_key_padding_mask)[0]
        src = src + self.dropout1(src2)
        src = self.norm1(src)
        src2 = self.fc2(self.dropout(self.act(self.fc1(src))))
        src = src + self.dropout2(src2)
        return self.norm2(src)


class AIFI(TransformerEncoderLayer):
    def forward(self, x):
        c, h, w = x.shape[1:]
        pos_embed = self.build_2d_sincos_position_embedding(w, h, c)
        x = super().forward(x.flatten(2).permute(0, 2, 1), pos=pos_embed.to(device=x.device, dtype=x.dtype))
        return x.permute(0, 2, 1).view([-1, c, h, w]).contiguous()

    @staticmethod
    def build_2d_sincos_position_embedding(w, h, embed_dim=256, temperature=10000.0):
        assert embed_dim % 4 == 0
        grid_w = torch.arange(w, dtype=torch.float32)
        grid_h = torch.arange(h, dtype=torch.float32)
        grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")
        pos_dim = embed_dim // 4
        omega = torch.arange(pos_dim, dtype=torch.float32) / pos_dim
        omega = 1.0 / (temperature ** omega)
        out_w = grid_w.flatten()[..., None] @ omega[None]
        out_h = grid_h.flatten()[..., None] @ omega[None]
        return torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], 1)[None]


class RepConv(nn.Module):
    def __init__(self, c1, c2, k=3, s=1, p=1, g=1, d=1, act=True, bn=False):
        super().__init__()
        self.act = nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()
        self.bn = nn.BatchNorm2d(num_features=c1) if bn and c2 == c1 and s == 1 else None
        self.conv1 = YConv(c1, c2, k, s, p=p, g=g, act=False)
        self.conv2 = YConv(c1, c2, 1, s, p=(p - k // 2), g=g, act=False)

    def forward(self, x):
        id_out = 0 if self.bn is None else self.bn(x)
        return self.act(self.conv1(x) + self.conv2(x) + id_out)


class RepC3(nn.Module):
    def __init__(self, c1, c2, n=3, e=1.0):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = YConv(c1, c_, 1, 1)
        self.cv2 = YConv(c1, c_, 1, 1)
        self.m = nn.Sequential(*[RepConv(c_, c_) for _ in range(n)])
        self.cv3 = YConv(c_, c2, 1, 1) if c_ != c2 else nn.Identity()

    def forward(self, x):
        return self.cv3(self.m(self.cv1(x)) + self.cv2(x))


class RTDETRHybridEncoder(nn.Module):
    """rtdetr-l.yaml's encoder at tiny width: input projections, AIFI on the flattened P5 with the 2D
    sin-cos position embedding, top-down and bottom-up fusion with RepC3."""

    def __init__(self, d=32):
        super().__init__()
        self.backbone = nn.ModuleList([nn.Sequential(YConv(3, 16, 3, 2), YConv(16, 16, 3, 2)),
                                       YConv(16, 32, 3, 2), YConv(32, 48, 3, 2)])      # strides 4, 8, 16
        self.proj5 = YConv(48, d, 1, 1, None, 1, 1, False)
        self.aifi = AIFI(d, 64, 2)
        self.lat5 = YConv(d, d, 1, 1)
        self.up = nn.Upsample(None, 2, "nearest")
        self.proj4 = YConv(32, d, 1, 1, None, 1, 1, False)
        self.fuse4 = RepC3(2 * d, d, 2)
        self.lat4 = YConv(d, d, 1, 1)
        self.proj3 = YConv(16, d, 1, 1, None, 1, 1, False)
        self.fuse3 = RepC3(2 * d, d, 2)
        self.down3, self.pan4 = YConv(d, d, 3, 2), RepC3(2 * d, d, 2)
        self.down4, self.pan5 = YConv(d, d, 3, 2), RepC3(2 * d, d, 2)

    def forward(self, x):
        feats = []
        for stage in self.backbone:
            x = stage(x)
            feats.append(x)
        c3, c4, c5 = feats
        y5 = self.lat5(self.aifi(self.proj5(c5)))
        y4 = self.fuse4(torch.cat([self.up(y5), self.proj4(c4)], 1))
        y4l = self.lat4(y4)
        p3 = self.fuse3(torch.cat([self.up(y4l), self.proj3(c3)], 1))
        p4 = self.pan4(torch.cat([self.down3(p3), y4l], 1))
        p5 = self.pan5(torch.cat([self.down4(p4), y5], 1))
        return p3, p4, p5


@register("rtdetr_hybrid_encoder_aifi", "detection", partial(_image, size=64))
def rtdetr_encoder():
    return RTDETRHybridEncoder()


# ================================================================ automotive / BEV
# ---------------------------------------------------------------- Lift-Splat-Shoot
def _lss_geometry(fH=8, fW=8, og=32, dbound=(4.0, 20.0, 2.0)):
    """LiftSplatShoot.create_frustum + get_geometry for two fixed cameras (front, back), no image
    augmentation: (N, D, fH, fW, 3) ego points."""
    ds = torch.arange(*dbound, dtype=torch.float).view(-1, 1, 1).expand(-1, fH, fW)
    D = ds.shape[0]
    xs = torch.linspace(0, og - 1, fW, dtype=torch.float).view(1, 1, fW).expand(D, fH, fW)
    ys = torch.linspace(0, og - 1, fH, dtype=torch.float).view(1, fH, 1).expand(D, fH, fW)
    frustum = torch.stack((xs, ys, ds), -1)
    intrins = torch.tensor([[16.0, 0, 16.0], [0, 16.0, 16.0], [0, 0, 1]])
    rots = torch.stack([torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]]),
                        torch.tensor([[0.0, 0, -1], [1, 0, 0], [0, -1, 0]])])
    trans = torch.tensor([[0.5, 0.0, 1.5], [-0.5, 0.0, 1.5]])
    points = torch.cat((frustum[..., :2] * frustum[..., 2:3], frustum[..., 2:3]), -1)
    combine = rots.matmul(torch.inverse(intrins))
    points = combine.view(2, 1, 1, 1, 3, 3).matmul(points.unsqueeze(0).unsqueeze(-1)).squeeze(-1)
    return points + trans.view(2, 1, 1, 1, 3)


class CamEncode(nn.Module):
    """LSS CamEncode: depth distribution (softmax over D bins) x context features, the outer product
    written as ``depth.unsqueeze(1) * x[:, D:D + C].unsqueeze(2)``."""

    def __init__(self, D, C):
        super().__init__()
        self.D, self.C = D, C
        self.trunk = nn.Sequential(Conv2dNormActivation(3, 16, stride=2), Conv2dNormActivation(16, 32, stride=2),
                                   Conv2dNormActivation(32, 32))
        self.depthnet = nn.Conv2d(32, self.D + self.C, kernel_size=1, padding=0)

    def get_depth_dist(self, x, eps=1e-20):
        return x.softmax(dim=1)

    def forward(self, x):
        x = self.depthnet(self.trunk(x))
        depth = self.get_depth_dist(x[:, :self.D])
        return depth.unsqueeze(1) * x[:, self.D:(self.D + self.C)].unsqueeze(2)


class LiftSplatShoot(nn.Module):
    """LSS (nv-tlabs/lift-splat-shoot) with fixed cameras: CamEncode, voxel pooling to a 16 x 16 BEV
    grid, BevEncode. ``pool="cumsum"``: the original cumsum trick (points sorted by voxel rank with
    constant indices, cumsum, keep the last of each voxel, difference, index_put into a zero BEV
    tensor); ``pool="matmul"``: sum pooling as a matmul with a constant 0/1 pooling matrix."""

    def __init__(self, pool="cumsum", C=8, bound=20.0, res=2.5):
        super().__init__()
        self.pool = pool
        geom = _lss_geometry()                                   # (N, D, H, W, 3)
        N, D, H, W, _ = geom.shape
        self.N, self.D, self.C = N, D, C
        self.nx = int(2 * bound / res)
        self.camencode = CamEncode(D, C)
        self.bevencode = nn.Sequential(Conv2dNormActivation(C, 16), Conv2dNormActivation(16, 16), nn.Conv2d(16, 1, 1))
        B = BATCH
        bx = torch.tensor([-bound + res / 2, -bound + res / 2, 0.0])
        dx = torch.tensor([res, res, 20.0])
        geom_b = geom.unsqueeze(0).expand(B, -1, -1, -1, -1, -1)
        Nprime = B * N * D * H * W
        geom_feats = ((geom_b - (bx - dx / 2.0)) / dx).long().view(Nprime, 3)
        batch_ix = torch.cat([torch.full([Nprime // B, 1], ix, dtype=torch.long) for ix in range(B)])
        geom_feats = torch.cat((geom_feats, batch_ix), 1)
        kept = ((geom_feats[:, 0] >= 0) & (geom_feats[:, 0] < self.nx) & (geom_feats[:, 1] >= 0)
                & (geom_feats[:, 1] < self.nx) & (geom_feats[:, 2] >= 0) & (geom_feats[:, 2] < 1))
        self.register_buffer("kept", kept)
        gf = geom_feats[kept]
        ranks = gf[:, 0] * (self.nx * B) + gf[:, 1] * B + gf[:, 2] * B + gf[:, 3]
        sorts = ranks.argsort()
        gf, ranks = gf[sorts], ranks[sorts]
        kept2 = torch.ones(gf.shape[0], dtype=torch.bool)
        kept2[:-1] = ranks[1:] != ranks[:-1]
        self.register_buffer("sorts", sorts)
        self.register_buffer("kept2", kept2)
        self.register_buffer("geom_feats", gf[kept2])
        # the same pooling as a (N*D*H*W, nx*ny) 0/1 matrix, per image
        g0 = ((geom - (bx - dx / 2.0)) / dx).long().view(-1, 3)
        ok = (g0[:, 0] >= 0) & (g0[:, 0] < self.nx) & (g0[:, 1] >= 0) & (g0[:, 1] < self.nx)
        P = torch.zeros(g0.shape[0], self.nx * self.nx)
        P[torch.nonzero(ok).squeeze(1), (g0[ok, 0] * self.nx + g0[ok, 1])] = 1.0
        self.register_buffer("pool_matrix", P)

    def get_cam_feats(self, x):
        B, N, C, imH, imW = x.shape
        x = x.view(B * N, C, imH, imW)
        x = self.camencode(x)
        x = x.view(B, N, self.C, self.D, imH // 4, imW // 4)
        return x.permute(0, 1, 3, 4, 5, 2)

    def voxel_pooling(self, x):
        B, N, D, H, W, C = x.shape
        if self.pool == "matmul":
            x = x.reshape(B, N * D * H * W, C).transpose(1, 2)
            return torch.matmul(x, self.pool_matrix).view(B, C, self.nx, self.nx)
        Nprime = B * N * D * H * W
        x = x.reshape(Nprime, C)
        x = x[self.kept]
        x = x[self.sorts]
        x = x.cumsum(0)                                          # QuickCumsum forward
        x = x[self.kept2]
        x = torch.cat((x[:1], x[1:] - x[:-1]))
        geom_feats = self.geom_feats
        final = torch.zeros((B, C, 1, self.nx, self.nx), dtype=x.dtype, device=x.device)
        final[geom_feats[:, 3], :, geom_feats[:, 2], geom_feats[:, 0], geom_feats[:, 1]] = x
        return torch.cat(final.unbind(dim=2), 1)

    def forward(self, x):
        x = self.get_cam_feats(x)
        x = self.voxel_pooling(x)
        return self.bevencode(x)


@register("lss_cumsum_scatter", "bev", _images)
def lss_cumsum():
    return LiftSplatShoot("cumsum")


@register("lss_matmul_pool", "bev", _images)
def lss_matmul():
    return LiftSplatShoot("matmul")


# ---------------------------------------------------------------- CenterNet / CenterPoint heads
def _nms(heat, kernel=3):
    """CenterNet's max-pool NMS."""
    pad = (kernel - 1) // 2
    hmax = F.max_pool2d(heat, (kernel, kernel), stride=1, padding=pad)
    keep = (hmax == heat).float()
    return heat * keep


def _sigmoid(x):
    return torch.clamp(x.sigmoid_(), min=1e-4, max=1 - 1e-4)


class SeparateHead(nn.Module):
    """CenterPoint / OpenPCDet SeparateHead: conv-BN-ReLU then a conv per regression target."""

    def __init__(self, input_channels, sep_head_dict, init_bias=-2.19, head_conv=16):
        super().__init__()
        self.sep_head_dict = sep_head_dict
        for cur_name in self.sep_head_dict:
            output_channels = self.sep_head_dict[cur_name]["out_channels"]
            num_conv = self.sep_head_dict[cur_name]["num_conv"]
            fc_list = []
            for k in range(num_conv - 1):
                fc_list.append(nn.Sequential(nn.Conv2d(input_channels, head_conv, 3, 1, 1, bias=False),
                                             nn.BatchNorm2d(head_conv), nn.ReLU()))
            fc_list.append(nn.Conv2d(head_conv, output_channels, 3, 1, 1, bias=True))
            fc = nn.Sequential(*fc_list)
            if "hm" in cur_name:
                fc[-1].bias.data.fill_(init_bias)
            self.__setattr__(cur_name, fc)

    def forward(self, x):
        return {name: self.__getattr__(name)(x) for name in self.sep_head_dict}


_CP_HEADS = {"center": 2, "center_z": 1, "dim": 3, "rot": 2, "hm": 3}


class CenterNetHead(nn.Module):
    """A BEV backbone, the shared conv, SeparateHead; heatmap sigmoid (clamped) and max-pool NMS
    ``hmax = F.max_pool2d(h, 3, 1, 1); keep = (hmax == h).float()``; raw regression maps."""

    def __init__(self, cin=16):
        super().__init__()
        self.backbone = nn.Sequential(Conv2dNormActivation(cin, 32), Conv2dNormActivation(32, 32))
        self.shared_conv = nn.Sequential(nn.Conv2d(32, 16, 3, 1, 1, bias=True), nn.BatchNorm2d(16), nn.ReLU())
        self.heads = SeparateHead(16, {k: {"out_channels": v, "num_conv": 2} for k, v in _CP_HEADS.items()})

    def forward(self, x):
        pred = self.heads(self.shared_conv(self.backbone(x)))
        heat = _nms(_sigmoid(pred["hm"]))
        return heat, pred["center"], pred["center_z"], pred["dim"], pred["rot"]


@register("centernet_maxpool_nms", "bev", partial(_image, size=32, channels=16))
def centernet_nms():
    return CenterNetHead()


class CenterPointDecode(CenterNetHead):
    """CenterPoint's per-pixel box decoding before top-k: exp(dim), atan2(rot_sin, rot_cos), grid
    offsets + regressed center scaled to metres, the NMS'd heatmap."""

    def __init__(self, cin=16, out_size_factor=2, voxel_size=(0.2, 0.2), pc_range=(-3.2, -3.2)):
        super().__init__(cin)
        self.f, self.vs, self.pc = out_size_factor, voxel_size, pc_range

    def forward(self, x):
        pred = self.heads(self.shared_conv(self.backbone(x)))
        batch, _, H, W = pred["hm"].shape
        batch_hm = _nms(torch.sigmoid(pred["hm"]))
        batch_dim = torch.exp(pred["dim"].permute(0, 2, 3, 1))
        batch_rots = pred["rot"][:, 0:1].permute(0, 2, 3, 1)
        batch_rotc = pred["rot"][:, 1:2].permute(0, 2, 3, 1)
        batch_reg = pred["center"].permute(0, 2, 3, 1)
        batch_hei = pred["center_z"].permute(0, 2, 3, 1)
        batch_rot = torch.atan2(batch_rots, batch_rotc)
        ys, xs = torch.meshgrid([torch.arange(0, H), torch.arange(0, W)], indexing="ij")
        ys = ys.view(1, H, W, 1).repeat(batch, 1, 1, 1).to(batch_hm)
        xs = xs.view(1, H, W, 1).repeat(batch, 1, 1, 1).to(batch_hm)
        xs = xs + batch_reg[..., 0:1]
        ys = ys + batch_reg[..., 1:2]
        xs = xs * self.f * self.vs[0] + self.pc[0]
        ys = ys * self.f * self.vs[1] + self.pc[1]
        box_preds = torch.cat([xs, ys, batch_hei, batch_dim, batch_rot], dim=3).view(batch, H * W, -1)
        return batch_hm, box_preds


@register("centerpoint_decode", "bev", partial(_image, size=32, channels=16))
def centerpoint_decode():
    return CenterPointDecode()


# ---------------------------------------------------------------- PointPillars
_PILLARS, _POINTS, _GRID = 48, 8, 16
_VOXEL, _PC = (0.5, 0.5, 4.0), (0.0, -4.0, -3.0, 8.0, 4.0, 1.0)


def _pillar_layout():
    """Fixed pillars: coords (BATCH * P, 4) as (batch, z, y, x) and the number of points of each."""
    g = torch.Generator().manual_seed(7)
    coords, counts = [], []
    for b in range(BATCH):
        cells = torch.randperm(_GRID * _GRID, generator=g)[:_PILLARS]
        coords.append(torch.stack([torch.full_like(cells, b), torch.zeros_like(cells), cells // _GRID, cells % _GRID], 1))
        counts.append(torch.randint(1, _POINTS + 1, (_PILLARS,), generator=g))
    return torch.cat(coords), torch.cat(counts)


def _pillar_points(seed):
    """(BATCH * P, N, 4) points (x, y, z, intensity) inside their pillars, zero padded."""
    coords, counts = _pillar_layout()
    g = torch.Generator().manual_seed(seed)
    n = coords.shape[0]
    x = (coords[:, 3:4].float() + torch.rand(n, _POINTS, generator=g)) * _VOXEL[0] + _PC[0]
    y = (coords[:, 2:3].float() + torch.rand(n, _POINTS, generator=g)) * _VOXEL[1] + _PC[1]
    z = torch.rand(n, _POINTS, generator=g) * 3.0 - 2.5
    r = torch.rand(n, _POINTS, generator=g)
    pts = torch.stack([x, y, z, r], -1)
    mask = torch.arange(_POINTS).view(1, -1) < counts.view(-1, 1)
    return (pts * mask.unsqueeze(-1),)


class PFNLayer(nn.Module):
    def __init__(self, in_channels, out_channels, use_norm=True, last_layer=False):
        super().__init__()
        self.last_vfe = last_layer
        self.use_norm = use_norm
        if not self.last_vfe:
            out_channels = out_channels // 2
        self.linear = nn.Linear(in_channels, out_channels, bias=not use_norm)
        self.norm = nn.BatchNorm1d(out_channels, eps=1e-3, momentum=0.01)

    def forward(self, inputs):
        x = self.linear(inputs)
        x = self.norm(x.permute(0, 2, 1)).permute(0, 2, 1) if self.use_norm else x
        x = F.relu(x)
        x_max = torch.max(x, dim=1, keepdim=True)[0]
        if self.last_vfe:
            return x_max
        x_repeat = x_max.repeat(1, inputs.shape[1], 1)
        return torch.cat([x, x_repeat], dim=2)


class PointPillars(nn.Module):
    """OpenPCDet PillarVFE (points mean, cluster and center offsets, padding mask, PFN layers) and
    PointPillarScatter (per batch: zeros canvas, ``spatial_feature[:, indices] = pillars``), then a
    small 2D BEV backbone. The pillar coordinates and point counts are fixed buffers."""

    def __init__(self, num_filters=(16, 32)):
        super().__init__()
        coords, counts = _pillar_layout()
        self.register_buffer("coords", coords)
        self.register_buffer("voxel_num_points", counts)
        self.voxel_x, self.voxel_y, self.voxel_z = _VOXEL
        self.x_offset = self.voxel_x / 2 + _PC[0]
        self.y_offset = self.voxel_y / 2 + _PC[1]
        self.z_offset = self.voxel_z / 2 + _PC[2]
        nf = [10] + list(num_filters)
        self.pfn_layers = nn.ModuleList(PFNLayer(nf[i], nf[i + 1], True, i >= len(nf) - 2) for i in range(len(nf) - 1))
        self.num_bev_features = nf[-1]
        self.nx = self.ny = _GRID
        self.nz = 1
        self.backbone = nn.Sequential(Conv2dNormActivation(nf[-1], 32, stride=2), Conv2dNormActivation(32, 32),
                                      nn.Conv2d(32, 8, 1))

    @staticmethod
    def get_paddings_indicator(actual_num, max_num, axis=0):
        actual_num = torch.unsqueeze(actual_num, axis + 1)
        max_num_shape = [1] * len(actual_num.shape)
        max_num_shape[axis + 1] = -1
        max_num = torch.arange(max_num, dtype=torch.int, device=actual_num.device).view(max_num_shape)
        return actual_num.int() > max_num

    def vfe(self, voxel_features):
        voxel_num_points, coords = self.voxel_num_points, self.coords
        points_mean = voxel_features[:, :, :3].sum(dim=1, keepdim=True) / voxel_num_points.type_as(voxel_features).view(-1, 1, 1)
        f_cluster = voxel_features[:, :, :3] - points_mean
        f_center = torch.zeros_like(voxel_features[:, :, :3])
        f_center[:, :, 0] = voxel_features[:, :, 0] - (
            coords[:, 3].to(voxel_features.dtype).unsqueeze(1) * self.voxel_x + self.x_offset)
        f_center[:, :, 1] = voxel_features[:, :, 1] - (
            coords[:, 2].to(voxel_features.dtype).unsqueeze(1) * self.voxel_y + self.y_offset)
        f_center[:, :, 2] = voxel_features[:, :, 2] - (
            coords[:, 1].to(voxel_features.dtype).unsqueeze(1) * self.voxel_z + self.z_offset)
        features = torch.cat([voxel_features, f_cluster, f_center], dim=-1)
        voxel_count = features.shape[1]
        mask = self.get_paddings_indicator(voxel_num_points, voxel_count, axis=0)
        mask = torch.unsqueeze(mask, -1).type_as(voxel_features)
        features *= mask
        for pfn in self.pfn_layers:
            features = pfn(features)
        return features.squeeze()

    def scatter(self, pillar_features):
        coords = self.coords
        batch_spatial_features = []
        batch_size = coords[:, 0].max().int().item() + 1
        for batch_idx in range(batch_size):
            spatial_feature = torch.zeros(self.num_bev_features, self.nz * self.nx * self.ny,
                                          dtype=pillar_features.dtype, device=pillar_features.device)
            batch_mask = coords[:, 0] == batch_idx
            this_coords = coords[batch_mask, :]
            indices = this_coords[:, 1] + this_coords[:, 2] * self.nx + this_coords[:, 3]
            indices = indices.type(torch.long)
            pillars = pillar_features[batch_mask, :]
            pillars = pillars.t()
            spatial_feature[:, indices] = pillars
            batch_spatial_features.append(spatial_feature)
        batch_spatial_features = torch.stack(batch_spatial_features, 0)
        return batch_spatial_features.view(batch_size, self.num_bev_features * self.nz, self.ny, self.nx)

    def forward(self, voxels):
        return self.backbone(self.scatter(self.vfe(voxels)))


@register("pointpillars_pfn_scatter", "bev", _pillar_points)
def pointpillars():
    return PointPillars()


# ---------------------------------------------------------------- BEVFormer spatial cross attention
def multi_scale_deformable_attn_pytorch(value, value_spatial_shapes, sampling_locations, attention_weights):
    """mmcv.ops.multi_scale_deform_attn.multi_scale_deformable_attn_pytorch."""
    bs, _, num_heads, embed_dims = value.shape
    _, num_queries, num_heads, num_levels, num_points, _ = sampling_locations.shape
    value_list = value.split([H_ * W_ for H_, W_ in value_spatial_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for level, (H_, W_) in enumerate(value_spatial_shapes):
        value_l_ = value_list[level].flatten(2).transpose(1, 2).reshape(bs * num_heads, embed_dims, H_, W_)
        sampling_grid_l_ = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampling_value_l_ = F.grid_sample(value_l_, sampling_grid_l_, mode="bilinear", padding_mode="zeros",
                                          align_corners=False)
        sampling_value_list.append(sampling_value_l_)
    attention_weights = attention_weights.transpose(1, 2).reshape(bs * num_heads, 1, num_queries, num_levels * num_points)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) * attention_weights).sum(-1).view(
        bs, num_heads * embed_dims, num_queries)
    return output.transpose(1, 2).contiguous()


class MSDeformableAttention(nn.Module):
    """mmcv MultiScaleDeformableAttention (BEVFormer's MSDeformableAttention3D without the Z anchors)."""

    def __init__(self, embed_dims=32, num_heads=2, num_levels=2, num_points=4):
        super().__init__()
        self.embed_dims, self.num_heads, self.num_levels, self.num_points = embed_dims, num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(0.1)
        with torch.no_grad():
            self.sampling_offsets.weight.mul_(0.2)

    def forward(self, query, value, reference_points, spatial_shapes, offset_normalizer, identity=None):
        identity = query if identity is None else identity
        bs, num_query, _ = query.shape
        _, num_value, _ = value.shape
        value = self.value_proj(value).view(bs, num_value, self.num_heads, -1)
        sampling_offsets = self.sampling_offsets(query).view(bs, num_query, self.num_heads, self.num_levels,
                                                              self.num_points, 2)
        attention_weights = self.attention_weights(query).view(bs, num_query, self.num_heads,
                                                               self.num_levels * self.num_points)
        attention_weights = attention_weights.softmax(-1)
        attention_weights = attention_weights.view(bs, num_query, self.num_heads, self.num_levels, self.num_points)
        sampling_locations = (reference_points[:, :, None, :, None, :]
                              + sampling_offsets / offset_normalizer[None, None, None, :, None, :])
        output = multi_scale_deformable_attn_pytorch(value, spatial_shapes, sampling_locations, attention_weights)
        output = self.output_proj(output)
        return self.dropout(output) + identity


class BEVFormerLite(nn.Module):
    """A BEVFormer encoder layer, reduced: BEV queries (the previous BEV, an input, plus learned
    queries and positions) attend to two image feature levels with multi-scale deformable
    attention (learned offsets + softmax weights, grid_sample), then norm, FFN, norm."""

    def __init__(self, dim=32, bev=8):
        super().__init__()
        self.bev = bev
        self.stage1 = nn.Sequential(Conv2dNormActivation(3, 16, stride=2), Conv2dNormActivation(16, dim, stride=2))
        self.stage2 = Conv2dNormActivation(dim, dim, stride=2)
        self.level_embeds = nn.Parameter(0.1 * torch.randn(2, dim))
        self.bev_embedding = nn.Parameter(0.1 * torch.randn(bev * bev, dim))
        self.bev_pos = nn.Parameter(0.1 * torch.randn(1, bev * bev, dim))
        self.cross_attn = MSDeformableAttention(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(inplace=True), nn.Dropout(0.1),
                                 nn.Linear(2 * dim, dim), nn.Dropout(0.1))
        self.norm2 = nn.LayerNorm(dim)
        self.spatial_shapes = [(IMG // 4, IMG // 4), (IMG // 8, IMG // 8)]
        self.register_buffer("offset_normalizer", torch.tensor([[w, h] for h, w in self.spatial_shapes],
                                                               dtype=torch.float))
        ys, xs = torch.meshgrid(torch.linspace(0.5, bev - 0.5, bev) / bev, torch.linspace(0.5, bev - 0.5, bev) / bev,
                                indexing="ij")
        ref = torch.stack((xs.reshape(-1), 0.3 + 0.6 * ys.reshape(-1)), -1)          # a fixed ground projection
        self.register_buffer("reference_points", ref[None, :, None, :].repeat(1, 1, 2, 1))

    def forward(self, img, prev_bev):
        f1 = self.stage1(img)
        f2 = self.stage2(f1)
        feat_flatten = []
        for lvl, feat in enumerate((f1, f2)):
            feat = feat.flatten(2).transpose(1, 2)
            feat = feat + self.level_embeds[None, lvl:lvl + 1, :]
            feat_flatten.append(feat)
        value = torch.cat(feat_flatten, 1)
        bs = img.shape[0]
        query = prev_bev + self.bev_embedding.unsqueeze(0)
        ref = self.reference_points.expand(bs, -1, -1, -1)
        x = self.cross_attn(query + self.bev_pos, value, ref, self.spatial_shapes, self.offset_normalizer,
                            identity=query)
        x = self.norm1(x)
        x = self.norm2(x + self.ffn(x))
        return x.permute(0, 2, 1).reshape(bs, -1, self.bev, self.bev)


def _img_and_bev(seed, dim=32, bev=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(BATCH, 3, IMG, IMG, generator=g), torch.randn(BATCH, bev * bev, dim, generator=g))


@register("bevformer_deformable_sca", "bev", _img_and_bev)
def bevformer():
    return BEVFormerLite()


# ---------------------------------------------------------------- PETR 3D position embedding
def inverse_sigmoid(x, eps=1e-5):
    x = x.clamp(min=0, max=1)
    x1 = x.clamp(min=eps)
    x2 = (1 - x).clamp(min=eps)
    return torch.log(x1 / x2)


def pos2posemb3d(pos, num_pos_feats=16, temperature=10000):
    scale = 2 * math.pi
    pos = pos * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=pos.device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)
    pos_x = pos[..., 0, None] / dim_t
    pos_y = pos[..., 1, None] / dim_t
    pos_z = pos[..., 2, None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(-2)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(-2)
    pos_z = torch.stack((pos_z[..., 0::2].sin(), pos_z[..., 1::2].cos()), dim=-1).flatten(-2)
    return torch.cat((pos_y, pos_x, pos_z), dim=-1)


_PETR_RANGE = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)


def _petr_inputs(seed, cams=2, size=32):
    """Images and per-camera img2lidar matrices (a front and a back pinhole camera, jittered)."""
    g = torch.Generator().manual_seed(seed)
    f, c, h = 16.0, 16.0, 1.5
    front = torch.tensor([[0, 0, 1, 0], [-1 / f, 0, c / f, 0], [0, -1 / f, c / f, h], [0, 0, 0, 1.0]])
    back = torch.tensor([[0, 0, -1, 0], [1 / f, 0, -c / f, 0], [0, -1 / f, c / f, h], [0, 0, 0, 1.0]])
    m = torch.stack([front, back])[None].repeat(BATCH, 1, 1, 1)
    m[..., :3, :] += 0.005 * torch.randn(BATCH, cams, 3, 4, generator=g)
    return torch.randn(BATCH, cams, 3, size, size, generator=g), m


class PETRLite(nn.Module):
    """PETRHead.position_embeding (frustum points lifted by the img2lidar matrices with a 7-D
    matmul, normalised to the point-cloud range, inverse_sigmoid, a 1x1-conv MLP) added to the
    image features; a query decoder layer (queries from pos2posemb3d of learned reference points)
    and PETR's box branch (``tmp[..., 0:2] += reference[..., 0:2]; tmp[..., 0:2] = sigmoid``)."""

    def __init__(self, embed_dims=32, depth_num=8, num_query=16, num_classes=4, depth_start=1.0):
        super().__init__()
        self.embed_dims, self.depth_num, self.depth_start = embed_dims, depth_num, depth_start
        self.backbone = nn.Sequential(Conv2dNormActivation(3, 16, stride=2), Conv2dNormActivation(16, 32, stride=2))
        self.input_proj = nn.Conv2d(32, embed_dims, kernel_size=1)
        self.position_encoder = nn.Sequential(nn.Conv2d(depth_num * 3, embed_dims * 4, 1), nn.ReLU(),
                                              nn.Conv2d(embed_dims * 4, embed_dims, 1))
        self.reference_points = nn.Embedding(num_query, 3)
        nn.init.uniform_(self.reference_points.weight.data, 0, 1)
        self.query_embedding = nn.Sequential(nn.Linear(embed_dims * 3 // 2, embed_dims), nn.ReLU(),
                                             nn.Linear(embed_dims, embed_dims))
        self.cross_attn = nn.MultiheadAttention(embed_dims, 2, batch_first=True)
        self.norm1 = nn.LayerNorm(embed_dims)
        self.ffn = nn.Sequential(nn.Linear(embed_dims, 64), nn.ReLU(), nn.Linear(64, embed_dims))
        self.norm2 = nn.LayerNorm(embed_dims)
        self.cls_branch = nn.Sequential(nn.Linear(embed_dims, embed_dims), nn.LayerNorm(embed_dims), nn.ReLU(),
                                        nn.Linear(embed_dims, num_classes))
        self.reg_branch = nn.Sequential(nn.Linear(embed_dims, embed_dims), nn.ReLU(), nn.Linear(embed_dims, 10))

    def position_embeding(self, img_feats, img2lidars, pad_h, pad_w):
        eps = 1e-5
        B, N, C, H, W = img_feats.shape
        coords_h = torch.arange(H, device=img_feats.device).float() * pad_h / H
        coords_w = torch.arange(W, device=img_feats.device).float() * pad_w / W
        index = torch.arange(start=0, end=self.depth_num, step=1, device=img_feats.device).float()
        index_1 = index + 1
        bin_size = (_PETR_RANGE[3] - self.depth_start) / (self.depth_num * (1 + self.depth_num))
        coords_d = self.depth_start + bin_size * index * index_1
        D = coords_d.shape[0]
        coords = torch.stack(torch.meshgrid([coords_w, coords_h, coords_d], indexing="ij")).permute(1, 2, 3, 0)
        coords = torch.cat((coords, torch.ones_like(coords[..., :1])), -1)
        coords[..., :2] = coords[..., :2] * torch.maximum(coords[..., 2:3], torch.ones_like(coords[..., 2:3]) * eps)
        coords = coords.view(1, 1, W, H, D, 4, 1).repeat(B, N, 1, 1, 1, 1, 1)
        img2lidars = img2lidars.view(B, N, 1, 1, 1, 4, 4).repeat(1, 1, W, H, D, 1, 1)
        coords3d = torch.matmul(img2lidars, coords).squeeze(-1)[..., :3]
        coords3d[..., 0:1] = (coords3d[..., 0:1] - _PETR_RANGE[0]) / (_PETR_RANGE[3] - _PETR_RANGE[0])
        coords3d[..., 1:2] = (coords3d[..., 1:2] - _PETR_RANGE[1]) / (_PETR_RANGE[4] - _PETR_RANGE[1])
        coords3d[..., 2:3] = (coords3d[..., 2:3] - _PETR_RANGE[2]) / (_PETR_RANGE[5] - _PETR_RANGE[2])
        coords3d = coords3d.permute(0, 1, 4, 5, 3, 2).contiguous().view(B * N, -1, H, W)
        coords3d = inverse_sigmoid(coords3d)
        coords_position_embeding = self.position_encoder(coords3d)
        return coords_position_embeding.view(B, N, self.embed_dims, H, W)

    def forward(self, imgs, img2lidars):
        B, N, _, pad_h, pad_w = imgs.shape
        x = self.input_proj(self.backbone(imgs.flatten(0, 1)))
        x = x.view(B, N, self.embed_dims, x.shape[-2], x.shape[-1])
        pos_embed = self.position_embeding(x, img2lidars, pad_h, pad_w)
        memory = x.permute(0, 1, 3, 4, 2).reshape(B, -1, self.embed_dims)
        pos = pos_embed.permute(0, 1, 3, 4, 2).reshape(B, -1, self.embed_dims)
        reference_points = self.reference_points.weight
        query_embeds = self.query_embedding(pos2posemb3d(reference_points))
        query_pos = query_embeds.unsqueeze(0).expand(B, -1, -1)
        target = torch.zeros_like(query_pos)
        q = self.norm1(target + self.cross_attn(target + query_pos, memory + pos, memory)[0])
        outs_dec = self.norm2(q + self.ffn(q))
        reference = inverse_sigmoid(reference_points.unsqueeze(0).repeat(B, 1, 1))
        outputs_class = self.cls_branch(outs_dec)
        tmp = self.reg_branch(outs_dec)
        tmp[..., 0:2] += reference[..., 0:2]
        tmp[..., 0:2] = tmp[..., 0:2].sigmoid()
        tmp[..., 4:5] += reference[..., 2:3]
        tmp[..., 4:5] = tmp[..., 4:5].sigmoid()
        return outputs_class, tmp


@register("petr_3d_position_embedding", "bev", _petr_inputs)
def petr():
    return PETRLite()


# ---------------------------------------------------------------- Ultra-Fast-Lane-Detection row anchors
class ParsingNet(nn.Module):
    """UFLD parsingNet: ResNet features, 1x1 pool conv, MLP classifier to (griding_num + 1, rows,
    lanes); then the demo's decoding in torch: rows flipped, softmax over the grid cells and the
    expectation ``sum(softmax * arange)``; ``mask=True`` also zeroes the lanes whose argmax is the
    'no lane' cell (``loc[out_j == griding_num] = 0``)."""

    def __init__(self, griding_num=16, row_anchors=6, lanes=4, mask=False):
        super().__init__()
        from zoo.models import BasicBlock, ResNet
        self.griding_num, self.cls_dim, self.mask = griding_num, (griding_num + 1, row_anchors, lanes), mask
        self.model = ResNet(BasicBlock, [1, 1, 1], widths=(8, 16, 32))
        self.pool = nn.Conv2d(32, 8, 1)
        self.total_dim = (griding_num + 1) * row_anchors * lanes
        self.cls = nn.Sequential(nn.Linear(8 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, self.total_dim))

    def forward(self, x):
        fea = self.model.features(x)
        fea = self.pool(fea).view(-1, 8 * 4 * 4)
        group_cls = self.cls(fea).view(-1, *self.cls_dim)
        out_j = torch.flip(group_cls, dims=[2])
        prob = torch.softmax(out_j[:, :-1, :, :], dim=1)
        idx = torch.arange(self.griding_num, dtype=prob.dtype, device=prob.device) + 1
        idx = idx.reshape(-1, 1, 1)
        loc = torch.sum(prob * idx, dim=1)
        if self.mask:
            amax = torch.argmax(out_j, dim=1)
            loc = torch.where(amax == self.griding_num, torch.zeros_like(loc), loc)
        return group_cls, loc


@register("ufld_lane_row_anchor", "lane", partial(_image, size=64))
def ufld():
    return ParsingNet()


@register("ufld_lane_row_anchor_mask", "lane", partial(_image, size=64))
def ufld_mask():
    return ParsingNet(mask=True)


# ================================================================ more Hugging Face transformers
TEXT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=32)
VISION = dict(image_size=IMG, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=2, intermediate_size=64)
_TXT_KEYS = ("input_ids", "attention_mask")
HF_EXTRA = {
    "hf_mobilebert": ("text", _tokens, _hf(tf.MobileBertModel, tf.MobileBertConfig, "last_hidden_state", _TXT_KEYS,
                                           embedding_size=16, intra_bottleneck_size=16, num_feedforward_networks=2,
                                           **{**TEXT, "intermediate_size": 32})),
    "hf_squeezebert": ("text", _tokens, _hf(tf.SqueezeBertModel, tf.SqueezeBertConfig, "last_hidden_state",
                                            _TXT_KEYS, embedding_size=32, **TEXT)),
    "hf_funnel_base": ("text", _tokens, _hf(tf.FunnelBaseModel, tf.FunnelConfig, "last_hidden_state", _TXT_KEYS,
                                            vocab_size=100, block_sizes=[1, 1], d_model=32, n_head=2, d_head=16,
                                            d_inner=64)),
    "hf_xlm_roberta": ("text", _tokens, _hf(tf.XLMRobertaModel, tf.XLMRobertaConfig, "last_hidden_state", _TXT_KEYS,
                                            pad_token_id=1, **TEXT)),
    "hf_mpnet": ("text", _tokens, _hf(tf.MPNetModel, tf.MPNetConfig, "last_hidden_state", _TXT_KEYS, pad_token_id=1,
                                      **TEXT)),
    "hf_albert": ("text", _tokens, _hf(tf.AlbertModel, tf.AlbertConfig, "last_hidden_state", _TXT_KEYS,
                                       embedding_size=16, **TEXT)),
    "hf_deberta_v2": ("text", _tokens, _hf(tf.DebertaV2Model, tf.DebertaV2Config, "last_hidden_state", _TXT_KEYS,
                                           relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"],
                                           **TEXT)),
    "hf_siglip_vision": ("vit", _image, _hf(tf.SiglipVisionModel, tf.SiglipVisionConfig, "pooler_output", **VISION)),
    "hf_blip_vision": ("vit", _image, _hf(tf.BlipVisionModel, tf.BlipVisionConfig, "pooler_output",
                                          initializer_range=0.02, **VISION)),   # default 1e-10: outputs ~1e-5
    "hf_data2vec_vision": ("vit", _image, _hf(tf.Data2VecVisionModel, tf.Data2VecVisionConfig, "last_hidden_state",
                                              use_relative_position_bias=True, **VISION)),
    "hf_hiera": ("vit", partial(_image, size=64), _hf(tf.HieraModel, tf.HieraConfig, "pooler_output",
                                                      image_size=[64, 64], embed_dim=16, depths=[1, 1, 1, 1],
                                                      num_heads=[1, 1, 2, 2], masked_unit_size=[8, 8])),
    "hf_yolos": ("detection", _image, _hf(tf.YolosForObjectDetection, tf.YolosConfig, "pred_boxes",
                                          num_detection_tokens=4, num_labels=4, **{**VISION, "image_size": [IMG, IMG]})),
    "hf_mobilenet_v1": ("mobilenet", _image, _hf(tf.MobileNetV1Model, tf.MobileNetV1Config, "pooler_output",
                                                 image_size=IMG, depth_multiplier=0.25)),
    "hf_pvt_v2": ("vit", _image, _hf(tf.PvtV2Model, tf.PvtV2Config, "last_hidden_state", image_size=IMG,
                                     num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                                     num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
                                     mlp_ratios=[2, 2])),
}

for _name, (_family, _inputs, _make) in HF_EXTRA.items():
    register(_name, _family, _inputs)(_make)


# ================================================================ late additions
# ---------------------------------------------------------------- DETR (facebookresearch/detr transformer.py)
class PositionEmbeddingSine(nn.Module):
    """detr models/position_encoding.PositionEmbeddingSine (no padding mask: all ones)."""

    def __init__(self, num_pos_feats=16, temperature=10000, normalize=True, scale=2 * math.pi):
        super().__init__()
        self.num_pos_feats, self.temperature, self.normalize, self.scale = num_pos_feats, temperature, normalize, scale

    def forward(self, x):
        not_mask = torch.ones(x.shape[0], x.shape[2], x.shape[3], dtype=x.dtype, device=x.device)
        y_embed = not_mask.cumsum(1, dtype=torch.float32)
        x_embed = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * (dim_t // 2) / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class DetrEncoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward=64, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1, self.dropout = nn.Linear(d_model, dim_feedforward), nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.activation = F.relu

    def forward(self, src, pos):
        q = k = src + pos
        src2 = self.self_attn(q, k, value=src)[0]
        src = self.norm1(src + self.dropout1(src2))
        src2 = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(src2))


class DetrDecoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward=64, dropout=0.1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1, self.dropout = nn.Linear(d_model, dim_feedforward), nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)
        self.activation = F.relu

    def forward(self, tgt, memory, pos, query_pos):
        q = k = tgt + query_pos
        tgt2 = self.self_attn(q, k, value=tgt)[0]
        tgt = self.norm1(tgt + self.dropout1(tgt2))
        tgt2 = self.multihead_attn(query=tgt + query_pos, key=memory + pos, value=memory)[0]
        tgt = self.norm2(tgt + self.dropout2(tgt2))
        tgt2 = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(tgt2))


class DETRLite(nn.Module):
    """DETR (sequence-first nn.MultiheadAttention, positions added to queries and keys, learned
    object queries, tgt = zeros), ResNet body, class and box (MLP + sigmoid) heads."""

    def __init__(self, d_model=32, nhead=2, num_queries=8, num_classes=4):
        super().__init__()
        self.backbone = TVResNet((1, 1, 1), widths=(4, 8, 8))
        self.input_proj = nn.Conv2d(32, d_model, kernel_size=1)
        self.position_embedding = PositionEmbeddingSine(d_model // 2)
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.encoder = nn.ModuleList([DetrEncoderLayer(d_model, nhead)])
        self.decoder = nn.ModuleList([DetrDecoderLayer(d_model, nhead)])
        self.decoder_norm = nn.LayerNorm(d_model)
        self.class_embed = nn.Linear(d_model, num_classes + 1)
        self.bbox_embed = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model), nn.ReLU(),
                                        nn.Linear(d_model, 4))

    def forward(self, x):
        b = self.backbone
        f = b.layer3(b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x)))))))
        pos = self.position_embedding(f)
        src = self.input_proj(f)
        bs, c, h, w = src.shape
        src = src.flatten(2).permute(2, 0, 1)
        pos_embed = pos.flatten(2).permute(2, 0, 1)
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, bs, 1)
        tgt = torch.zeros_like(query_embed)
        memory = src
        for layer in self.encoder:
            memory = layer(memory, pos_embed)
        hs = tgt
        for layer in self.decoder:
            hs = layer(hs, memory, pos_embed, query_embed)
        hs = self.decoder_norm(hs).transpose(0, 1)
        return self.class_embed(hs), self.bbox_embed(hs).sigmoid()


@register("detr_nn_multihead", "detection", partial(_image, size=64))
def detr():
    return DETRLite()


# ---------------------------------------------------------------- EfficientDet BiFPN fast normalized fusion
class BiFPNNode(nn.Module):
    """EfficientDet (zylo117 Yet-Another-EfficientDet) fast normalized fusion:
    ``w = relu(self.w); w = w / (sum(w) + eps)``, weighted sum of resized inputs, swish, separable conv."""

    def __init__(self, c, n_inputs, epsilon=1e-4):
        super().__init__()
        self.w = nn.Parameter(torch.ones(n_inputs, dtype=torch.float32) + 0.3 * torch.rand(n_inputs))
        self.w_relu = nn.ReLU()
        self.epsilon = epsilon
        self.depthwise = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.pointwise = nn.Conv2d(c, c, 1)
        self.bn = nn.BatchNorm2d(c, momentum=0.01, eps=1e-3)
        self.swish = nn.SiLU()

    def forward(self, inputs):
        w = self.w_relu(self.w)
        weight = w / (torch.sum(w, dim=0) + self.epsilon)
        x = sum(weight[i] * t for i, t in enumerate(inputs))
        return self.bn(self.pointwise(self.depthwise(self.swish(x))))


class BiFPNLite(nn.Module):
    """One BiFPN layer over three levels (top-down then bottom-up, nearest upsample and max-pool down)."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.ModuleList([nn.Sequential(Conv2dNormActivation(3, 16, stride=2), Conv2dNormActivation(16, c, stride=2)),
                                   Conv2dNormActivation(c, c, stride=2), Conv2dNormActivation(c, c, stride=2)])
        self.p4_td, self.p3_out = BiFPNNode(c, 2), BiFPNNode(c, 2)
        self.p4_out, self.p5_out = BiFPNNode(c, 3), BiFPNNode(c, 2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.down = nn.MaxPool2d(3, 2, 1)

    def forward(self, x):
        feats = []
        for s in self.stem:
            x = s(x)
            feats.append(x)
        p3, p4, p5 = feats
        p4_td = self.p4_td([p4, self.up(p5)])
        p3_out = self.p3_out([p3, self.up(p4_td)])
        p4_out = self.p4_out([p4, p4_td, self.down(p3_out)])
        p5_out = self.p5_out([p5, self.down(p4_out)])
        return p3_out, p4_out, p5_out


@register("efficientdet_bifpn", "detection", partial(_image, size=64))
def bifpn():
    return BiFPNLite()

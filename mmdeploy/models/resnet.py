"""ResNets with the key names of the paper's reference code and torchvision.

CIFAR ResNet-(6n+2): 3x3 stem with 16 channels, three stages of n BasicBlocks (16/32/64),
1x1 projection only where the shape changes (layer2.0 and layer3.0).
ImageNet ResNet-18/34/50/101/152: torchvision's layout (stride on Bottleneck.conv2).
Global pooling is a mean over H and W, so any input size exports and runs correctly.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdeploy.models.registry import register


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, planes, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, planes * 4, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block, layers, widths, num_classes, stem: str):
        super().__init__()
        self.inplanes = widths[0] if stem == "cifar" else 64
        if stem == "cifar":
            self.conv1 = _conv3x3(3, self.inplanes)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        for i, (n, width) in enumerate(zip(layers, widths)):
            setattr(self, f"layer{i + 1}", self._stage(block, width, n, 1 if i == 0 else 2))
        self.num_stages = len(layers)
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block, as the reference code does
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)

    def _stage(self, block, planes, n, stride):
        blocks = [block(self.inplanes, planes, stride)]
        self.inplanes = planes * block.expansion
        blocks += [block(self.inplanes, planes) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(x.mean((2, 3)), 1))


def cifar_resnet_depth(depth: int, num_classes: int = 10) -> ResNet:
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n, n, n], [16, 32, 64], num_classes, stem="cifar")


# The smallest CIFAR input is 4 px: two stride-2 stages turn 4 into 1.
@register("cifar", 4)
def cifar_resnet8(num_classes: int = 10):
    return cifar_resnet_depth(8, num_classes)


@register("cifar", 4)
def cifar_resnet20(num_classes: int = 10):
    return cifar_resnet_depth(20, num_classes)


@register("cifar", 4)
def cifar_resnet32(num_classes: int = 10):
    return cifar_resnet_depth(32, num_classes)


@register("cifar", 4)
def cifar_resnet44(num_classes: int = 10):
    return cifar_resnet_depth(44, num_classes)


@register("cifar", 4)
def cifar_resnet56(num_classes: int = 10):
    return cifar_resnet_depth(56, num_classes)


@register("cifar", 4)
def cifar_resnet110(num_classes: int = 10):
    return cifar_resnet_depth(110, num_classes)


_IMAGENET = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3]),
             101: (Bottleneck, [3, 4, 23, 3]), 152: (Bottleneck, [3, 8, 36, 3])}


def imagenet_resnet_depth(depth: int, num_classes: int = 1000) -> ResNet:
    if depth not in _IMAGENET:
        raise ValueError(f"ImageNet ResNet depth must be one of {sorted(_IMAGENET)}, got {depth}")
    block, layers = _IMAGENET[depth]
    return ResNet(block, layers, [64, 128, 256, 512], num_classes, stem="imagenet")


# ImageNet ResNets downsample 32x; 32 px is the smallest side that keeps a 1x1 map.
@register("imagenet", 32)
def resnet18(num_classes: int = 1000):
    return imagenet_resnet_depth(18, num_classes)


@register("imagenet", 32)
def resnet34(num_classes: int = 1000):
    return imagenet_resnet_depth(34, num_classes)


@register("imagenet", 32)
def resnet50(num_classes: int = 1000):
    return imagenet_resnet_depth(50, num_classes)


@register("imagenet", 32)
def resnet101(num_classes: int = 1000):
    return imagenet_resnet_depth(101, num_classes)


@register("imagenet", 32)
def resnet152(num_classes: int = 1000):
    return imagenet_resnet_depth(152, num_classes)

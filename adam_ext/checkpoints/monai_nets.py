"""MONAI networks that take an exported trunk (``adam export --format monai``) as they are.

torchvision's ResNet is MONAI's ``ResNet`` with ``spatial_dims=2``, a stride-2 stem
(``conv1_t_stride=2``), 1×1-convolution shortcuts without bias (``shortcut_type="B"``,
``bias_downsample=False``) and no ``fc`` (``feed_forward=False``): the same key names and shapes, the
same outputs bit for bit (tests/checkpoints/test_export.py). MONAI's ``FlexibleUNet`` builds its resnet50/101/152
encoders so; its resnet18/34 encoders follow MedicalNet instead (parameter-free zero-padding
shortcuts, ``shortcut_type="A"``), which have no place for torchvision's shortcut convolutions, so
:func:`flexible_unet` gives those depths the torchvision-shaped encoder (the same feature maps and
channels, 64, 64, 128, 256, 512).

The model card's MONAI snippet (:func:`~adam_ext.checkpoints.export.load_snippets`) writes the same in
plain MONAI, without adam_ext.
"""

from __future__ import annotations

__all__ = ["MONAI_BLOCKS", "flexible_unet", "resnet", "resnet_features"]

#: torchvision ResNet name -> (MONAI block, blocks per stage).
MONAI_BLOCKS = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
    "resnet152": ("bottleneck", [3, 8, 36, 3]),
}
#: FlexibleUNet backbones whose own encoder is torchvision-shaped.
_FLEXIBLE_OWN = ("resnet50", "resnet101", "resnet152")


def _torchvision_shape(in_channels: int) -> dict:
    return {
        "spatial_dims": 2,
        "n_input_channels": in_channels,
        "conv1_t_stride": 2,
        "shortcut_type": "B",
        "bias_downsample": False,
        "feed_forward": False,
    }


def _blocks(arch: str):
    if arch not in MONAI_BLOCKS:
        raise ValueError(f"arch must be one of {', '.join(MONAI_BLOCKS)}, got {arch!r}")
    return MONAI_BLOCKS[arch]


def resnet(arch: str, in_channels: int = 3):
    """``monai.networks.nets.ResNet`` shaped like torchvision's ``arch`` without ``fc``: its forward
    gives the pooled features, (B, 512) or (B, 2048)."""
    from monai.networks.nets import ResNet
    from monai.networks.nets.resnet import get_inplanes

    block, layers = _blocks(arch)
    return ResNet(block, layers, get_inplanes(), **_torchvision_shape(in_channels))


def resnet_features(arch: str, in_channels: int = 3):
    """MONAI's ``ResNetFeatures`` (the five feature maps a FlexibleUNet decodes) shaped like
    torchvision's ``arch``."""
    from monai.networks.nets import ResNet
    from monai.networks.nets.resnet import ResNetFeatures, get_inplanes

    block, layers = _blocks(arch)
    encoder = ResNetFeatures.__new__(ResNetFeatures)
    # ResNetFeatures.__init__ takes its shape from MedicalNet's table; ResNet.__init__ takes it from us.
    ResNet.__init__(encoder, block, layers, get_inplanes(), **_torchvision_shape(in_channels))
    return encoder


def flexible_unet(arch: str, out_channels: int, in_channels: int = 3):
    """``monai.networks.nets.FlexibleUNet`` (2-D) with a ResNet ``arch`` encoder that takes an exported
    trunk strictly: ``flexible_unet(...).encoder.load_state_dict(trunk, strict=True)``."""
    from monai.networks.nets import FlexibleUNet

    _blocks(arch)
    net = FlexibleUNet(in_channels=in_channels, out_channels=out_channels, backbone=arch, spatial_dims=2)
    if arch not in _FLEXIBLE_OWN:
        net.encoder = resnet_features(arch, in_channels)
    return net

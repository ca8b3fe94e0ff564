"""Net1D, S. Hong's 1-D ResNeXt with squeeze-and-excitation: the ECG encoder of the official evaluator.

Source: DiffuSETS `clip/clip_model.py` (classes `MyConv1dPadSame`, `MyMaxPool1dPadSame`,
`BasicBlock`, `BasicStage`, `Net1D`; adapted from METS / hsd1503/resnet1d).
Channels-last here: signals `(B, L, C)` instead of PyTorch's `(B, C, L)`. Module names mirror
the official ones (`first_conv`, `stage_list`, `block_list`, `bn1`, `conv2`, `se_fc1`, ...).

Train and evaluation modes are an explicit `train` flag: `train=True` normalises with the batch
statistics (and updates the running ones in place, momentum 0.1 as PyTorch's) and applies
dropout with `rngs`; `train=False` uses the running statistics and no dropout. The running
variance is the biased batch variance (PyTorch keeps the unbiased one; the difference is
1/(B * L) relative).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from diffusets_jax.models.layers import linear, ones_init, torch_bias_init, torch_kernel_init, zeros_init

Array = jax.Array


def swish(x: Array) -> Array:
    """x * sigmoid(x), the official `Swish` module."""
    return x * jax.nn.sigmoid(x)


def conv_same(
    in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, groups: int = 1, rngs: nnx.Rngs
) -> nnx.Conv:
    """`MyConv1dPadSame`: `(B, L, C_in)` -> `(B, ceil(L / stride), C_out)`, zero "SAME" padding.

    The official padding (total p, p // 2 on the left) is XLA's "SAME". Kernel `(k, C_in / groups,
    C_out)`, PyTorch's default initialisation (fan-in k * C_in / groups).
    """
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(kernel_size,),
        strides=(stride,),
        padding="SAME",
        feature_group_count=groups,
        kernel_init=torch_kernel_init,
        bias_init=torch_bias_init(in_channels // groups * kernel_size),
        rngs=rngs,
    )


def batch_norm(num_channels: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """`torch.nn.BatchNorm1d(C)` on `(B, L, C)`: eps 1e-5, running averages with momentum 0.1."""
    return nnx.BatchNorm(
        num_channels,
        momentum=0.9,
        epsilon=1e-5,
        use_fast_variance=False,
        scale_init=ones_init,
        bias_init=zeros_init,
        rngs=rngs,
    )


def max_pool_same(x: Array, window: int) -> Array:
    """`MyMaxPool1dPadSame`: `window - 1` zeros on the right (zeros, not -inf, as the official
    code), then max-pooling with window and stride `window`: `(B, L, C)` -> `(B, ceil(L / window), C)`
    for even L (what every Net1D stage sees)."""
    x = jnp.pad(x, ((0, 0), ((window - 1) // 2, window - 1 - (window - 1) // 2), (0, 0)))
    return nnx.max_pool(x, window_shape=(window,), strides=(window,), padding="VALID")


class BasicBlock(nnx.Module):
    """conv1x1 -> grouped conv k (stride) -> conv1x1, each after BatchNorm, Swish and dropout,
    then squeeze-and-excitation (r = 2) and the residual. `(B, L, C_in)` -> `(B, L / stride, C_out)`.

    The very first block of the network skips BatchNorm/Swish/dropout before its first conv (the
    stem just applied them) but, like the official block, still owns `bn1`. A downsampling block's
    identity is max-pooled; wider outputs zero-pad the identity's channels, half on each side.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        ratio: float,
        kernel_size: int,
        stride: int,
        groups: int,
        downsample: bool,
        is_first_block: bool,
        dropout: float,
        rngs: nnx.Rngs,
    ):
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = stride if downsample else 1
        self.downsample, self.is_first_block = downsample, is_first_block
        middle = int(out_channels * ratio)
        self.bn1 = batch_norm(in_channels, rngs=rngs)
        self.conv1 = conv_same(in_channels, middle, 1, rngs=rngs)
        self.bn2 = batch_norm(middle, rngs=rngs)
        self.conv2 = conv_same(middle, middle, kernel_size, stride=self.stride, groups=groups, rngs=rngs)
        self.bn3 = batch_norm(middle, rngs=rngs)
        self.conv3 = conv_same(middle, out_channels, 1, rngs=rngs)
        self.se_fc1 = linear(out_channels, out_channels // 2, rngs=rngs)
        self.se_fc2 = linear(out_channels // 2, out_channels, rngs=rngs)
        self.dropout = nnx.Dropout(dropout)

    def _pre_activation(self, norm: nnx.BatchNorm, x: Array, train: bool, rngs) -> Array:
        x = swish(norm(x, use_running_average=not train))
        return self.dropout(x, deterministic=not train, rngs=rngs)

    def __call__(self, x: Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> Array:
        out = x if self.is_first_block else self._pre_activation(self.bn1, x, train, rngs)
        out = self.conv1(out)
        out = self.conv2(self._pre_activation(self.bn2, out, train, rngs))
        out = self.conv3(self._pre_activation(self.bn3, out, train, rngs))  # (B, L', C_out)
        excitation = self.se_fc2(swish(self.se_fc1(out.mean(axis=1))))  # (B, C_out)
        out = out * jax.nn.sigmoid(excitation)[:, None, :]
        identity = max_pool_same(x, self.stride) if self.downsample else x
        if self.out_channels != self.in_channels:
            extra = self.out_channels - self.in_channels
            identity = jnp.pad(identity, ((0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return out + identity


class BasicStage(nnx.Module):
    """`m_blocks` BasicBlocks; the first one downsamples by `stride` and widens to `out_channels`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        ratio: float,
        kernel_size: int,
        stride: int,
        groups: int,
        stage_index: int,
        m_blocks: int,
        dropout: float,
        rngs: nnx.Rngs,
    ):
        self.block_list = nnx.List(
            [
                BasicBlock(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    ratio=ratio,
                    kernel_size=kernel_size,
                    stride=stride if i == 0 else 1,
                    groups=groups,
                    downsample=i == 0,
                    is_first_block=stage_index == 0 and i == 0,
                    dropout=dropout,
                    rngs=rngs,
                )
                for i in range(m_blocks)
            ]
        )

    def __call__(self, x: Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> Array:
        for block in self.block_list:
            x = block(x, train=train, rngs=rngs)
        return x


class Net1D(nnx.Module):
    """Signals `(B, L, in_channels)` (mV) -> features `(B, filter_list[-1])`, the mean over time.

    A stride-2 stem conv (k = kernel_size, base_filters wide) with BatchNorm and Swish, then one
    stage per entry of `filter_list` (`m_blocks_list` blocks, grouped convs of
    `filters // groups_width` groups, the first block of each stage striding by `stride`). With
    L = 1024 and 7 stages the time axis goes 1024 -> 512 -> 256 -> ... -> 4.

    The official evaluator's sizes (`paper_net1d_kwargs()`) have 18,660,992 parameters.

    Raises ValueError if a width is not a multiple of `groups_width` or the lists differ in length.
    """

    def __init__(
        self,
        *,
        in_channels: int = 12,
        base_filters: int = 64,
        ratio: float = 1.0,
        filter_list: Sequence[int] = (64, 128, 128, 256, 256, 512, 1024),
        m_blocks_list: Sequence[int] = (2, 2, 2, 3, 3, 4, 4),
        kernel_size: int = 16,
        stride: int = 2,
        groups_width: int = 16,
        dropout: float = 0.5,
        rngs: nnx.Rngs,
    ):
        if len(filter_list) != len(m_blocks_list):
            raise ValueError(
                f"filter_list {tuple(filter_list)} and m_blocks_list {tuple(m_blocks_list)} "
                "must have one entry per stage"
            )
        if any(f % groups_width for f in filter_list):
            raise ValueError(
                f"every width in filter_list {tuple(filter_list)} must be a multiple of groups_width={groups_width}"
            )
        self.out_features = filter_list[-1]
        self.first_conv = conv_same(in_channels, base_filters, kernel_size, stride=2, rngs=rngs)
        self.first_bn = batch_norm(base_filters, rngs=rngs)
        widths_in = (base_filters, *filter_list[:-1])
        self.stage_list = nnx.List(
            [
                BasicStage(
                    c_in,
                    c_out,
                    ratio=ratio,
                    kernel_size=kernel_size,
                    stride=stride,
                    groups=c_out // groups_width,
                    stage_index=i,
                    m_blocks=m,
                    dropout=dropout,
                    rngs=rngs,
                )
                for i, (c_in, c_out, m) in enumerate(zip(widths_in, filter_list, m_blocks_list))
            ]
        )

    def __call__(self, signals: Array, *, train: bool = False, rngs: nnx.Rngs | None = None) -> Array:
        """`(B, L, C)` -> `(B, filter_list[-1])`. `train=True` needs `rngs` with a `dropout` stream."""
        out = swish(self.first_bn(self.first_conv(signals), use_running_average=not train))
        for stage in self.stage_list:
            out = stage(out, train=train, rngs=rngs)
        return out.mean(axis=1)


def paper_net1d_kwargs() -> dict:
    """The official evaluator's Net1D arguments (`clip/clip_model.py`, class `CLIP`)."""
    return dict(
        in_channels=12,
        base_filters=64,
        ratio=1.0,
        filter_list=(64, 128, 128, 256, 256, 512, 1024),
        m_blocks_list=(2, 2, 2, 3, 3, 4, 4),
        kernel_size=16,
        stride=2,
        groups_width=16,
        dropout=0.5,
    )

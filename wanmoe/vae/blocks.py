"""Causal 3-D building blocks shared by the Wan2.1 and Wan2.2 VAEs (spec §6.1, §6.3, §6.6).

Every block takes `(x, cache=None)`. With a `CausalCache` the block processes one chunk of a clip
and keeps its time history in the cache (the official chunked schedule). With `cache=None` the
input is the *whole* clip and the equivalent full-sequence definition of §6.6 is used (handy for
training). Parameter names follow the official `.pth` files (`residual.0.gamma`, `resample.1`, ...).

Weights are cast to the activation dtype inside each conv, which reproduces the official
float32-autocast behaviour when parameters are stored in bf16: the math stays in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wanmoe.vae.cache import CausalCache


def _as3(v: int | tuple[int, ...]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


def _cpu_fast(x: torch.Tensor, enabled: bool) -> bool:
    return enabled and x.device.type == "cpu" and x.dtype == torch.float32


def conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           stride: tuple[int, int, int], fast_cpu: bool = True) -> torch.Tensor:
    """Unpadded 3-D convolution; with `fast_cpu` on CPU in fp32 it may call oneDNN directly.

    PyTorch's CPU heuristic sends inputs with few channels (B*C*T*H <= 20480) to `slow_conv3d`,
    whose im2col buffer is 27x the input (decode peak 285 MB instead of 100 MB for a 4-channel
    decoder at 256x256) and which is ~2x slower there; tiny test and demo VAEs hit it.
    oneDNN is used when that buffer would outgrow the weight (more output voxels than output
    channels): for wide convs on tiny frames oneDNN's per-call weight reorder costs more.
    Reference twin: `F.conv3d` (what upstream calls; fp32 round-off differences only).
    On GPU this is always `F.conv3d` (cuDNN), as upstream.
    """
    voxels = x.shape[0] * x.shape[2] * x.shape[3] * x.shape[4] // (stride[0] * stride[1] * stride[2])
    if (_cpu_fast(x, fast_cpu) and weight.dtype == torch.float32 and voxels > weight.shape[0]
            and torch.backends.mkldnn.is_available()):
        return torch.mkldnn_convolution(x.contiguous(), weight.contiguous(), bias, (0, 0, 0), stride,
                                        (1, 1, 1), 1)
    return F.conv3d(x, weight, bias, stride)


def l2_normalize_channels(x: torch.Tensor, fast_cpu: bool = True) -> torch.Tensor:
    """`F.normalize(x, dim=1)` (eps 1e-12). With `fast_cpu` on CPU the norm is sqrt(sum(x^2)):
    PyTorch's CPU `linalg_vector_norm` over dim 1 is 8-36x slower for these layouts.
    Reference twin: `F.normalize` (upstream's op; the norms differ by fp32 round-off)."""
    if _cpu_fast(x, fast_cpu):
        return x / x.square().sum(1, keepdim=True).sqrt().clamp_min(1e-12)
    return F.normalize(x, dim=1)


def use_reference_kernels(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch every VAE conv/norm of `model` to the plain upstream ops (F.conv3d, F.normalize)."""
    for m in model.modules():
        if isinstance(m, (CausalConv3d, RMSNorm)):
            m.fast_cpu = not enabled
    return model


class CausalConv3d(nn.Conv3d):
    """Conv3d with zero padding of 2*p_t frames in front (none behind) and symmetric spatial padding."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int | tuple[int, int, int],
                 stride: int | tuple[int, int, int] = 1, padding: int | tuple[int, int, int] = 0):
        super().__init__(in_dim, out_dim, kernel, stride=stride, padding=0)
        pt, ph, pw = _as3(padding)
        self.causal_pad = (2 * pt, ph, pw)  # (front time frames, h, w)
        self.fast_cpu = True  # see conv3d(); use_reference_kernels() turns it off

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        front, ph, pw = self.causal_pad
        hist = cache.get(self) if (cache is not None and front) else None
        n_hist = 0 if hist is None else hist.shape[2]
        if cache is not None and front:
            # keep the last `front` real input frames (earlier chunk's frames when this one is short)
            keep = x if hist is None or x.shape[2] >= front else torch.cat([hist, x], 2)
            cache.set(self, keep[:, :, -front:].clone())
        zeros_t = front - n_hist
        if zeros_t or ph or pw or n_hist:
            b, c, t, h, w = x.shape
            buf = x.new_zeros(b, c, zeros_t + n_hist + t, h + 2 * ph, w + 2 * pw)
            if n_hist:
                buf[:, :, zeros_t:zeros_t + n_hist, ph:ph + h, pw:pw + w] = hist
            buf[:, :, zeros_t + n_hist:, ph:ph + h, pw:pw + w] = x
            x = buf
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return conv3d(x, self.weight.to(x.dtype), bias, self.stride, self.fast_cpu)


class Conv2d(nn.Conv2d):
    """Conv2d computing in the activation dtype (weights cast on the fly)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x, self.weight.to(x.dtype), bias)


class SiLU(nn.Module):
    """SiLU that works in place when autograd is off (saves one activation-sized buffer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=not torch.is_grad_enabled())


class RMSNorm(nn.Module):
    """Channel-first `F.normalize(x, dim=1) * sqrt(C) * gamma` (L2 normalise, eps 1e-12; no bias)."""

    def __init__(self, dim: int, images: bool = False):
        super().__init__()
        shape = (dim, 1, 1) if images else (dim, 1, 1, 1)  # images: 4-D per-frame input
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(shape))
        self.fast_cpu = True  # see l2_normalize_channels(); use_reference_kernels() turns it off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = l2_normalize_channels(x, self.fast_cpu)
        gamma = self.gamma.to(y.dtype)
        if torch.is_grad_enabled():
            return y * self.scale * gamma
        return y.mul_(self.scale).mul_(gamma)  # same rounding order as (y * scale) * gamma


class NearestUp2x(nn.Module):
    """Nearest-exact x2 spatial upsampling computed in float32 (official `Upsample`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=(2.0, 2.0), mode="nearest-exact").type_as(x)


class ResidualBlock(nn.Module):
    """norm-SiLU-conv3 twice plus a (1x1x1 conv or identity) shortcut."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        self.residual = nn.Sequential(
            RMSNorm(in_dim), SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim), SiLU(), nn.Dropout(dropout), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame (middle blocks only)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = Conv2d(dim, dim * 3, 1)
        self.proj = Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        y = self.norm(y)
        qkv = self.to_qkv(y).reshape(b * t, 1, c * 3, h * w).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)  # each [b*t, 1, h*w, c]; q = channels [0:C], k [C:2C], v [2C:3C]
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)
        y = self.proj(y)
        return y.view(b, t, c, h, w).permute(0, 2, 1, 3, 4) + x


class Resample(nn.Module):
    """Spatial x2 up/down (per frame) with an optional causal temporal x2 step (spec §6.1, §6.6)."""

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str, out_dim: int | None = None):
        super().__init__()
        assert mode in self.MODES, mode
        self.mode = mode
        if mode.startswith("upsample"):
            out_dim = dim // 2 if out_dim is None else out_dim  # Wan2.1 halves, Wan2.2 keeps dim
            self.resample = nn.Sequential(NearestUp2x(), Conv2d(dim, out_dim, 3, padding=1))
            if mode == "upsample3d":
                self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), Conv2d(dim, dim, 3, stride=2))
            if mode == "downsample3d":
                self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: CausalCache | None = None) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._time_up(x, cache)
        b, c, t, h, w = x.shape
        y = self.resample(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        x = y.view(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)  # [B, C', T, H', W']
        if self.mode == "downsample3d":
            x = self._time_down(x, cache)
        return x

    @staticmethod
    def _interleave(y: torch.Tensor) -> torch.Tensor:
        """[B, 2C, T, H, W] -> [B, C, 2T, H, W]: first channel half is the earlier frame."""
        b, c2, t, h, w = y.shape
        y = y.reshape(b, 2, c2 // 2, t, h, w)
        return torch.stack((y[:, 0], y[:, 1]), 3).reshape(b, c2 // 2, t * 2, h, w)

    def _time_up(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        if cache is None:  # whole clip: frame 0 passes, frames 1.. go through the conv on their own
            rest = x[:, :, 1:]
            if rest.shape[2] == 0:
                return x
            return torch.cat([x[:, :, :1], self._interleave(self.time_conv(rest))], 2)
        if cache.first_chunk:  # upstream "Rep": the first chunk skips the time conv
            return x
        return self._interleave(self.time_conv(x, cache))

    def _time_down(self, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
        if cache is None:  # whole clip: [y0] + stride-2 windows (y0,y1,y2), (y2,y3,y4), ...
            if x.shape[2] < 3:
                return x[:, :, :1]
            return torch.cat([x[:, :, :1], self.time_conv(x)], 2)
        prev = cache.get(self)
        cache.set(self, x[:, :, -1:].clone())
        if prev is None:  # first chunk passes through unconvolved
            return x
        return self.time_conv(torch.cat([prev, x], 2))


class AvgDown3D(nn.Module):
    """Parameter-free shortcut: fold ft x fs x fs blocks into channels, average channel groups."""

    def __init__(self, in_dim: int, out_dim: int, ft: int, fs: int):
        super().__init__()
        self.out_dim, self.ft, self.fs = out_dim, ft, fs
        self.group = in_dim * ft * fs * fs // out_dim
        assert self.group * out_dim == in_dim * ft * fs * fs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ft, fs = self.ft, self.fs
        if ft == 1 and fs == 1 and self.group == 1:
            return x
        pad = (-x.shape[2]) % ft
        if pad:  # zero frames in front (per chunk; the first chunk is the odd one)
            x = F.pad(x, (0, 0, 0, 0, pad, 0))
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # [B, C, ft, fs_h, fs_w, T', H', W']
        x = x.reshape(b, self.out_dim, self.group, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free shortcut: repeat channels, unfold them into ft x fs x fs blocks."""

    def __init__(self, in_dim: int, out_dim: int, ft: int, fs: int):
        super().__init__()
        self.out_dim, self.ft, self.fs = out_dim, ft, fs
        self.repeats = out_dim * ft * fs * fs // in_dim
        assert self.repeats * in_dim == out_dim * ft * fs * fs

    def forward(self, x: torch.Tensor, first_chunk: bool) -> torch.Tensor:
        ft, fs = self.ft, self.fs
        x = x.repeat_interleave(self.repeats, dim=1)
        b, _, t, h, w = x.shape
        x = x.view(b, self.out_dim, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, self.out_dim, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1:] if first_chunk else x  # the clip's first ft-1 frames are dropped


def run_causal(layers: nn.Module, x: torch.Tensor, cache: CausalCache | None) -> torch.Tensor:
    """Apply a Sequential/ModuleList in order, passing the cache to the layers that take one."""
    for layer in layers:
        if isinstance(layer, (CausalConv3d, ResidualBlock, AttentionBlock, Resample)):
            x = layer(x, cache)
        else:
            x = layer(x)
    return x

"""Encode/decode driver shared by both Wan VAEs: chunking, latent normalisation, validation.

The official wrappers (`Wan2_1_VAE`, `Wan2_2_VAE`, spec §6.4-6.5) run

    encode: [patchify] -> encoder on frame 0, then 4-frame chunks (shared causal cache)
            -> conv1 -> mu = channels [0:z] -> (mu - mean) * (1 / std)
    decode: z / (1 / std) + mean -> conv2 -> decoder one latent frame at a time (cache)
            -> [unpatchify] -> float32 clamp to [-1, 1]

with all math in float32. `chunked=False` runs the whole clip through the equivalent
full-sequence definition of §6.6 instead (same result to fp32 round-off; faster for training,
but its memory grows with the clip length). Nothing here disables autograd: callers wrap
inference in `torch.no_grad()` / `torch.inference_mode()`.
"""

from __future__ import annotations

import torch
from torch import nn

from wanmoe.configs import VAEConfig
from wanmoe.errors import InputError
from wanmoe.vae.blocks import CausalConv3d
from wanmoe.vae.cache import CausalCache


class CausalVideoVAE(nn.Module):
    """Common driver; builds `encoder`, `conv1`, `conv2`, `decoder` (official names and order)."""

    version = ""  # set by subclasses, with the encoder/decoder classes of that version
    encoder_cls: type[nn.Module]
    decoder_cls: type[nn.Module]

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        if cfg.version != self.version:
            raise ValueError(f"{type(self).__name__} needs a VAEConfig with version {self.version!r}, "
                             f"got {cfg.version!r}; use wanmoe.vae.build_vae(cfg)")
        self.cfg = cfg
        z = cfg.z_dim
        # registration order = state-dict order of the official .pth files
        self.encoder = self.encoder_cls(cfg.dim, z * 2, cfg.dim_mult, cfg.num_res_blocks,
                                        cfg.temporal_downsample)
        self.conv1 = CausalConv3d(z * 2, z * 2, 1)  # quant conv: posterior mean and log-variance
        self.conv2 = CausalConv3d(z, z, 1)  # post-quant conv
        self.decoder = self.decoder_cls(cfg.dec_dim, z, cfg.dim_mult, cfg.num_res_blocks,
                                        cfg.temporal_downsample[::-1])

    # -- hooks for the pixel patchify of Wan2.2 (identity for Wan2.1) --------------------------
    def patchify(self, video: torch.Tensor) -> torch.Tensor:
        return video

    def unpatchify(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output -> pixels; written into `out` (same shape as the pixels) when given."""
        return x if out is None else out.copy_(x)

    # -- shapes and validation -------------------------------------------------------------------
    def num_latent_frames(self, frames: int) -> int:
        return 1 + (frames - 1) // self.cfg.stride[0]

    def num_frames(self, latent_frames: int) -> int:
        return 1 + self.cfg.stride[0] * (latent_frames - 1)

    def _check_video(self, video: torch.Tensor) -> None:
        st, sh, sw = self.cfg.stride
        if video.dim() != 5 or video.shape[1] != 3:
            raise InputError(f"VAE encode input has shape {tuple(video.shape)}; expected [B, 3, T, H, W]")
        t, h, w = video.shape[2:]
        if t < 1 or (t - 1) % st:
            lo = 1 + st * max((t - 1) // st, 0)
            raise InputError(f"video has T={t} frames; the VAE needs T = {st}n+1 (1, {1 + st}, "
                             f"{1 + 2 * st}, ...); use {lo} or {lo + st}")
        if h % sh or w % sw:
            raise InputError(f"video size {w}x{h} (WxH) is not a multiple of the VAE stride {sw}; "
                             f"use e.g. {w - w % sw or sw}x{h - h % sh or sh}")

    def _check_latent(self, z: torch.Tensor) -> tuple[int, int, int, int, int]:
        """Validates a decode input; returns the shape of its decoded video `(B, 3, T, H, W)`."""
        if z.dim() != 5 or z.shape[1] != self.cfg.z_dim or z.shape[2] < 1:
            raise InputError(f"VAE decode input has shape {tuple(z.shape)}; expected "
                             f"[B, {self.cfg.z_dim}, F>=1, h, w] for the Wan{self.cfg.version} VAE")
        b, _, f, h, w = z.shape
        s = self.cfg.stride[1]
        return (b, 3, self.num_frames(f), h * s, w * s)

    @staticmethod
    def _check_out(out: torch.Tensor | None, shape: tuple[int, ...]) -> None:
        if out is not None and (tuple(out.shape) != shape or out.dtype != torch.float32):
            raise InputError(f"decode out= tensor is {tuple(out.shape)} {out.dtype}; expected {shape} float32")

    # -- latent normalisation (spec §6.4) --------------------------------------------------------
    def latent_scale(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1/std) as float32 [1, z, 1, 1, 1]; 1/std is the fp32 reciprocal used upstream."""
        shape = (1, self.cfg.z_dim, 1, 1, 1)
        mean = torch.tensor(self.cfg.mean, dtype=torch.float32, device=device).view(shape)
        inv_std = 1.0 / torch.tensor(self.cfg.std, dtype=torch.float32, device=device).view(shape)
        return mean, inv_std

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self.latent_scale(mu.device)
        return (mu - mean) * inv_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self.latent_scale(z.device)
        return z / inv_std + mean  # divides by the reciprocal, as upstream (not z * std)

    # -- encode ----------------------------------------------------------------------------------
    def encode_moments(self, video: torch.Tensor, chunked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (unnormalised) posterior mean and log-variance, each [B, z, F, h, w] float32."""
        self._check_video(video)
        x = self.patchify(video.float())
        if chunked:
            st = self.cfg.stride[0]
            cache = CausalCache()
            outs = []
            for i in range(self.num_latent_frames(x.shape[2])):
                chunk = x[:, :, :1] if i == 0 else x[:, :, 1 + st * (i - 1):1 + st * i]
                outs.append(self.encoder(chunk, cache))
                cache.next_chunk()
            h = torch.cat(outs, 2) if len(outs) > 1 else outs[0]
        else:
            h = self.encoder(x, None)
        mu, logvar = self.conv1(h).chunk(2, dim=1)
        return mu, logvar

    def encode(self, video: torch.Tensor, chunked: bool = True) -> torch.Tensor:
        """[B, 3, T, H, W] in [-1, 1] (T = 4n+1) -> normalised latent mean [B, z, 1+(T-1)/4, h, w]."""
        mu, _ = self.encode_moments(video, chunked)
        return self.normalize(mu)

    # -- decode ----------------------------------------------------------------------------------
    def decode_pixels(self, z: torch.Tensor, out: torch.Tensor | None = None,
                      chunked: bool = True) -> torch.Tensor:
        """Normalised latent -> unclamped float32 pixels [B, 3, T, H, W] (written into `out` if given)."""
        shape = self._check_latent(z)
        self._check_out(out, shape)
        x = self.conv2(self.denormalize(z.float()))
        if not chunked:
            return self.unpatchify(self.decoder(x, None), out=out)
        if out is None:
            out = x.new_empty(shape)
        cache = CausalCache()  # decoder memory is bounded by one latent frame plus this history
        t0 = 0
        for i in range(x.shape[2]):
            y = self.decoder(x[:, :, i:i + 1], cache)  # [B, C_out, t_i, H/p, W/p] (p: patch, 1 for 2.1)
            self.unpatchify(y, out=out[:, :, t0:t0 + y.shape[2]])  # straight into out: no per-chunk copy
            t0 += y.shape[2]
            cache.next_chunk()
        assert t0 == shape[2], (t0, shape)
        return out

    def decode(self, z: torch.Tensor, tiling=None, chunked: bool = True, clamp: bool = True,
               out: torch.Tensor | None = None) -> torch.Tensor:
        """[B, z, F, h, w] normalised latent -> float32 video [B, 3, 1+4(F-1), H, W] clamped to [-1, 1].

        tiling: optional `wanmoe.vae.tiling.TileSpec` (spatial tiles, each with its own cache).
        out: optional preallocated float32 output (lets callers bound peak memory).
        """
        if tiling is not None:
            from wanmoe.vae.tiling import tiled_decode_pixels

            y = tiled_decode_pixels(self, z, tiling, out=out, chunked=chunked)
        else:
            y = self.decode_pixels(z, out=out, chunked=chunked)
        if not clamp:
            return y
        if y.requires_grad:  # keep autograd simple when training through decode
            return y.clamp(-1.0, 1.0)
        return y.clamp_(-1.0, 1.0)  # upstream `.float().clamp_(-1, 1)`

"""The PtychoPINN network: a CNN encoder with separate amplitude and phase decoders.

Upstream layout: for N = 64 the encoder has 3 blocks of (conv3x3 + ReLU) x 2 + maxpool with
32f, 64f, 128f filters (f = n_filters_scale); N = 32 uses 2 blocks, N = 128 adds a 256f block.
Upstream's decoders mirror the encoder from the bottleneck alone with nearest-neighbour upsampling
(`Decoder`, `model.decoder: plain`). The default decoders are U-Net ones (`SkipDecoder`): each level
also reads the encoder block of its own scale, so full-resolution detail of the (back-propagated)
input need not squeeze through the N/8 bottleneck; this more than doubled the phase SSIM at equal
steps in the ablation (benchmarks/ablation.py) and removed the nearest-neighbour grid artefact. Input x (B, C, N, N) float32
(normalised amplitudes); output complex object patches O = a * exp(i phi) (B, C, N, N) complex64 with
a = sigmoid(.) in (0, 1) and phi the raw decoder output in radians. The phase is deliberately not
bounded with pi * tanh(.) (upstream's choice): the global phase is invisible to the loss, so it drifts,
and once it reaches +-pi the tanh saturates and the phase decoder stops learning (measured: a flat
reconstruction after 20 epochs). exp(i phi) wraps the phase anyway.
"""

from __future__ import annotations

import torch
from torch import nn

N_BLOCKS = {32: 2, 64: 3, 128: 4}


def filter_counts(N: int, n_filters_scale: float) -> list[int]:
    """Filters per encoder block, e.g. N=64, f=0.25 -> [8, 16, 32]."""
    if N not in N_BLOCKS:
        raise ValueError(f"N must be one of {sorted(N_BLOCKS)}, got {N}")
    return [max(1, round(32 * n_filters_scale * 2**k)) for k in range(N_BLOCKS[N])]


def _conv_pair(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(inplace=True)]


class Decoder(nn.Module):
    """Bottleneck features (B, F_last, N/2^k, N/2^k) -> one real map per channel (B, C, N, N)."""

    def __init__(self, filters: list[int], channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        rev = filters[::-1]
        for c_in, c_out in zip(rev, rev[1:] + [filters[0]]):
            layers += _conv_pair(c_in, c_out) + [nn.Upsample(scale_factor=2, mode="nearest")]
        layers.append(nn.Conv2d(filters[0], channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class SkipDecoder(nn.Module):
    """U-Net decoder: bottleneck (B, F_last, N/2^k, N/2^k) and the encoder's per-block features
    [(B, F_j, N/2^j, N/2^j) for j = 0..k-1] -> one real map per channel (B, C, N, N). Each level
    upsamples bilinearly, concatenates the encoder features of its scale and convolves, so detail the
    encoder saw at full resolution reaches the output without passing the N/2^k bottleneck."""

    def __init__(self, filters: list[int], channels: int) -> None:
        super().__init__()
        levels = []
        c_prev = filters[-1]
        for f in filters[::-1]:
            levels.append(nn.Sequential(*_conv_pair(c_prev + f, f)))
            c_prev = f
        self.levels = nn.ModuleList(levels)
        self.head = nn.Conv2d(filters[0], channels, 3, padding=1)

    def forward(self, features: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        h = features
        for level, skip in zip(self.levels, skips[::-1]):
            h = nn.functional.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = level(torch.cat([h, skip], dim=1))
        return self.head(h)


class PtychoNet(nn.Module):
    """Input maps (B, C_in, N, N) -> complex object patches (B, C, N, N); C_in defaults to C
    (normalised amplitudes), 2C for back-propagated (real, imaginary) estimates. `skips=True` gives
    the decoders U-Net skip connections from every encoder block (SkipDecoder)."""

    channels_last_input = True  # False: the input as it comes (the path before issue 31, for side-by-side timing)

    def __init__(self, N: int = 64, channels: int = 1, n_filters_scale: float = 1.0,
                 in_channels: int | None = None, skips: bool = False) -> None:
        super().__init__()
        self.N, self.channels, self.skips = N, channels, skips
        filters = filter_counts(N, n_filters_scale)
        blocks: list[nn.Module] = []
        c_in = channels if in_channels is None else in_channels
        for c_out in filters:
            blocks.append(nn.Sequential(*_conv_pair(c_in, c_out)))
            c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.pool = nn.MaxPool2d(2)
        decoder = SkipDecoder if skips else Decoder
        self.amplitude_decoder = decoder(filters, channels)
        self.phase_decoder = decoder(filters, channels)
        # channels-last weights: oneDNN (CPU) and cuDNN convolve NHWC faster; the 4-D inputs follow the
        # weights' layout, outputs are the same maps (measured ~1.3x per CPU training step)
        self.to(memory_format=torch.channels_last)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C_in, N, N) -> bottleneck (B, F_last, N/2^k, N/2^k) and each block's pre-pool output."""
        skips = []
        if self.channels_last_input:  # as the weights: no layout change per layer (~1.2x, benchmarks/inference_speed.py)
            x = x.contiguous(memory_format=torch.channels_last)
        for block in self.blocks:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        return x, skips

    def forward_amp_phase(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return amplitude in (0, 1) and phase in radians (unbounded), each (B, C, N, N) float32."""
        features, skips = self.encode(x)
        if self.skips:
            amp_map, phase_map = self.amplitude_decoder(features, skips), self.phase_decoder(features, skips)
        else:
            amp_map, phase_map = self.amplitude_decoder(features), self.phase_decoder(features)
        return torch.sigmoid(amp_map.float()), phase_map.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        amp, phase = self.forward_amp_phase(x)
        return torch.polar(amp, phase)  # (B, C, N, N) complex64

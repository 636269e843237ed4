"""The PtychoPINN network: a CNN encoder with separate amplitude and phase decoders.

Upstream layout: for N = 64 the encoder has 3 blocks of (conv3x3 + ReLU) x 2 + maxpool with
32f, 64f, 128f filters (f = n_filters_scale); N = 32 uses 2 blocks, N = 128 adds a 256f block.
The decoders mirror the encoder with nearest-neighbour upsampling. Input x (B, C, N, N) float32
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


class PtychoNet(nn.Module):
    """Input maps (B, C_in, N, N) -> complex object patches (B, C, N, N); C_in defaults to C
    (normalised amplitudes), 2C for back-propagated (real, imaginary) estimates."""

    def __init__(self, N: int = 64, channels: int = 1, n_filters_scale: float = 1.0,
                 in_channels: int | None = None) -> None:
        super().__init__()
        self.N, self.channels = N, channels
        filters = filter_counts(N, n_filters_scale)
        layers: list[nn.Module] = []
        c_in = channels if in_channels is None else in_channels
        for c_out in filters:
            layers += _conv_pair(c_in, c_out) + [nn.MaxPool2d(2)]
            c_in = c_out
        self.encoder = nn.Sequential(*layers)
        self.amplitude_decoder = Decoder(filters, channels)
        self.phase_decoder = Decoder(filters, channels)

    def forward_amp_phase(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return amplitude in (0, 1) and phase in radians (unbounded), each (B, C, N, N) float32."""
        features = self.encoder(x)  # (B, F_last, N / 2^k, N / 2^k)
        amp = torch.sigmoid(self.amplitude_decoder(features).float())
        phase = self.phase_decoder(features).float()
        return amp, phase

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        amp, phase = self.forward_amp_phase(x)
        return torch.polar(amp, phase)  # (B, C, N, N) complex64

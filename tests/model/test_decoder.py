"""The decoder's inference shortcuts give what the plain operations give, to float rounding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model.decoder import Upsampler, bicubic_up


def test_exact_doubling_equals_torch_bicubic() -> None:
    """The separable x2 (inference) against F.interpolate, odd sizes and one-pixel edges included."""
    gen = torch.Generator().manual_seed(0)
    for shape in [(1, 3, 5, 7), (2, 4, 1, 9), (1, 2, 16, 1), (1, 8, 30, 54)]:
        x = torch.randn(*shape, generator=gen)
        size = (2 * shape[-2], 2 * shape[-1])
        with torch.no_grad():
            got = bicubic_up(x, size)
        ref = F.interpolate(x, size, mode="bicubic", align_corners=False)
        assert got.shape == ref.shape
        assert torch.allclose(got, ref, atol=1e-5), shape


def test_upsampler_mixing_channels_first_equals_conv_after_resize() -> None:
    """Without grad the last conv's channels are mixed before the resize; with grad (training) the
    layers run as written. Both give the same logits, for doubling and for other output sizes."""
    gen = torch.Generator().manual_seed(1)
    for c, h, w, size in [(16, 15, 27, (60, 108)), (8, 7, 9, (28, 36)), (8, 7, 9, (31, 40)), (4, 1, 3, (4, 12))]:
        up = Upsampler(c)
        with torch.no_grad():
            for p in up.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        x = torch.randn(2, c, h, w, generator=gen)
        ref = up(x, size).detach()  # grad enabled: conv2 after the resize
        with torch.no_grad():
            got = up(x, size)
        assert got.shape == ref.shape == (2, 1, *size)
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item()), (c, h, w, size)

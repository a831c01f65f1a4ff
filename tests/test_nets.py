"""Denoiser networks: shapes, conditioning (noise level, class, learned null label), per-sample
independence, sizes from config, and clear errors for configs that do not fit the data."""

from __future__ import annotations

import pytest
import torch

from difflab.nets import MLP, DiT, UNet, build_net

CASES = [
    ({"name": "mlp", "width": 64, "depth": 2, "emb_dim": 32}, (2,)),
    ({"name": "mlp", "width": 64, "depth": 2, "emb_dim": 32}, (1, 8, 8)),
    (
        {
            "name": "unet",
            "channels": 16,
            "ch_mult": [1, 2],
            "num_res_blocks": 1,
            "attn_resolutions": [4],
            "groups": 8,
        },
        (1, 8, 8),
    ),
    (
        {
            "name": "unet",
            "channels": 16,
            "ch_mult": [1, 2, 2],
            "num_res_blocks": 1,
            "attn_resolutions": [7],
            "groups": 8,
        },
        (1, 28, 28),
    ),
    ({"name": "dit", "patch_size": 2, "hidden": 32, "depth": 2, "heads": 2}, (3, 8, 8)),
]


def _randomize(net: torch.nn.Module) -> torch.nn.Module:
    """Zero-initialised output layers make every output 0; perturb all weights to see the conditioning."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


@pytest.mark.parametrize(("cfg", "shape"), CASES)
@pytest.mark.parametrize("num_classes", [0, 3])
def test_shapes_and_conditioning(cfg, shape, num_classes):
    torch.manual_seed(0)
    net = build_net(cfg, shape, num_classes)
    x, lam = torch.randn(4, *shape), torch.linspace(-10, 10, 4)
    assert torch.count_nonzero(net(x, lam)) == 0  # zero-initialised output: D starts at the skip path
    _randomize(net)
    with torch.no_grad():
        out = net(x, lam)
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert not torch.allclose(out, net(x, lam + 1.0), atol=1e-5)  # the log-SNR matters
        # each sample is processed on its own (no batch statistics): sample 0 alone gives the same
        assert torch.allclose(net(x[:1], lam[:1]), out[:1], atol=1e-5)
        if num_classes:
            null = torch.full((4,), num_classes)
            assert torch.allclose(net(x, lam, null), out, atol=1e-6)  # None means the null label
            y = torch.tensor([0, 1, 2, 0])
            assert not torch.allclose(net(x, lam, y), out, atol=1e-5)
            with pytest.raises(ValueError, match="class label out of range"):
                net(x, lam, torch.tensor([0, 1, 2, 4]))
        else:
            assert torch.allclose(net(x, lam, torch.zeros(4, dtype=torch.long)), out)  # labels ignored


def test_null_label_row_and_backward():
    net = build_net({"name": "mlp", "width": 32, "depth": 1, "emb_dim": 16}, (2,), 10)
    assert net.cond.label.embed.num_embeddings == 11
    loss = net(torch.randn(8, 2), torch.randn(8), torch.randint(0, 11, (8,))).square().sum()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_sizes_from_config():
    digits_mlp = build_net({"name": "mlp", "width": 256, "depth": 4, "emb_dim": 128}, (1, 8, 8), 10)
    mnist_unet = build_net(
        {"name": "unet", "channels": 64, "ch_mult": [1, 2, 2], "num_res_blocks": 2, "attn_resolutions": [7]},
        (1, 28, 28),
        10,
    )
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 3e5 < count(digits_mlp) < 1e6
    assert 2e6 < count(mnist_unet) < 1e7
    assert isinstance(digits_mlp, MLP) and isinstance(mnist_unet, UNet)
    assert isinstance(build_net({"name": "dit"}, (1, 8, 8)), DiT)
    wide = build_net({"name": "mlp", "width": 512, "depth": 4, "emb_dim": 128}, (1, 8, 8), 10)
    assert count(wide) > 2 * count(digits_mlp)


@pytest.mark.parametrize(
    ("cfg", "shape", "message"),
    [
        ({"name": "resnet"}, (1, 8, 8), "unknown denoiser 'resnet'; valid denoisers: mlp, unet, dit"),
        ({"name": "unet"}, (2,), "needs image data"),
        ({"name": "unet", "ch_mult": [1, 2, 2, 2]}, (1, 28, 28), "divisible by 8"),
        ({"name": "dit", "patch_size": 3}, (1, 8, 8), "patch_size=3"),
        ({"name": "mlp", "depht": 2}, (2,), "unknown argument 'depht'"),
    ],
)
def test_config_that_does_not_fit(cfg, shape, message):
    with pytest.raises(ValueError, match=message):
        build_net(cfg, shape, 0)


@pytest.mark.parametrize(("cfg", "shape"), CASES)
def test_learned_skip_can_pass_the_input_through(cfg, shape):
    """With the skip gain at 1 and the rest at initialisation the net is exactly the identity: the low-SNR
    eps target (~ the input) is representable without the body learning an identity map."""
    net = build_net(cfg, shape, 0)
    with torch.no_grad():
        net.skip.gain.bias.fill_(1.0)
    x = torch.randn(3, *shape)
    assert torch.allclose(net(x, torch.zeros(3)), x)

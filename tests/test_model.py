"""The ULFFN network: shapes, structure, CAM statistics, input checks, trainability, model_info."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from helpers import few_torch_threads
from torch import nn

from ulffn_deploy.config import VARIANTS, ModelConfig
from ulffn_deploy.errors import UlffnError
from ulffn_deploy.model import CAM, ULFFN, build_model, check_input_size, model_info


@pytest.fixture(autouse=True)
def _few_threads():
    yield from few_torch_threads()


@pytest.fixture(scope="module")
def tiny() -> ULFFN:
    torch.manual_seed(0)
    return ULFFN(width=8).eval()


@pytest.mark.parametrize("shape", [(32, 32), (48, 64), (64, 64), (8, 16)])
def test_logits_have_the_input_resolution(tiny, shape):
    with torch.no_grad():
        out = tiny(torch.randn(2, 3, *shape))
    assert out.shape == (2, 2, *shape)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_runs(variant):
    model = ULFFN(variant=variant, width=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_variants_differ_in_parameter_count():
    counts = {v: sum(p.numel() for p in ULFFN(variant=v, width=8).parameters()) for v in VARIANTS}
    assert len(set(counts.values())) == len(VARIANTS), counts
    assert counts["w-ac"] > counts["w-a"] and counts["w-ac"] > counts["w-c"] > counts["wo-ac"]


def test_variants_have_aspp_and_cam_as_configured():
    for variant in VARIANTS:
        model = ULFFN(variant=variant, width=8)
        has_cam = any(isinstance(m, CAM) for m in model.modules())
        assert has_cam == model.config.has_cam
        dilations = {m.dilation[0] for m in model.modules() if isinstance(m, nn.Conv2d)}
        assert ({6, 12, 18} <= dilations) == model.config.has_aspp


def test_structure_follows_the_paper(tiny):
    modules = list(tiny.modules())
    assert sum(isinstance(m, nn.PixelShuffle) and m.upscale_factor == 2 for m in modules) == 3
    dilations = sorted(m.dilation[0] for m in modules if isinstance(m, nn.Conv2d) and m.dilation[0] > 1)
    assert dilations == [6, 12, 18]
    assert not any(isinstance(m, (nn.MaxPool2d, nn.Upsample)) for m in modules)
    strided = [m for m in modules if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert len(strided) == 3  # units 1-3 downsample, unit 4 does not: output stride 8
    assert tiny.head.out_channels == 2


def test_skip_and_decoder_resolutions(tiny):
    seen: dict[str, tuple[int, int]] = {}
    hooks = [
        unit.fuse.register_forward_hook(lambda m, i, o, k=f"d{n}": seen.__setitem__(k, tuple(o.shape[-2:])))
        for n, unit in enumerate(tiny.decoder, start=1)
    ]
    hooks += [
        unit.block.register_forward_hook(lambda m, i, o, k=f"e{n}": seen.__setitem__(k, tuple(o.shape[-2:])))
        for n, unit in enumerate(tiny.encoder, start=1)
    ]
    with torch.no_grad():
        tiny(torch.randn(1, 3, 64, 64))
    for hook in hooks:
        hook.remove()
    assert seen == {
        "e1": (64, 64), "e2": (32, 32), "e3": (16, 16), "e4": (8, 8),
        "d1": (8, 8), "d2": (16, 16), "d3": (32, 32), "d4": (64, 64),
    }  # fmt: skip


def test_cam_variance_pooling_is_the_population_variance():
    torch.manual_seed(1)
    x = torch.randn(3, 16, 7, 5) * 4 + 1000  # large offset: E[x^2] - E[x]^2 would be off by ~0.2 here
    stats = CAM(16).statistics(x)
    assert stats.shape == (3, 32, 1, 1)
    mean, var = stats[:, :16], stats[:, 16:]
    torch.testing.assert_close(mean, x.mean(dim=(2, 3), keepdim=True))
    torch.testing.assert_close(var, torch.var(x, dim=(2, 3), unbiased=False, keepdim=True), rtol=1e-4, atol=1e-4)


def test_cam_is_residual_and_channel_wise():
    cam = CAM(16).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        out = cam(x)
    scale = out / x  # x * w + x == x * (1 + w) with 0 < w < 1 per (image, channel)
    assert scale.min() > 1 and scale.max() < 2
    torch.testing.assert_close(scale, scale[..., :1, :1].expand_as(scale))


@pytest.mark.parametrize(("h", "w", "use"), [(30, 64, "pad to 32x64 or crop to 24x64"), (64, 50, "56 or crop")])
def test_non_multiple_of_8_input_says_what_to_use(tiny, h, w, use):
    with pytest.raises(UlffnError) as err:
        tiny(torch.randn(1, 3, h, w))
    assert f"height={h}, width={w}" in err.value.message and "divisible by 8" in err.value.message
    assert use in err.value.hint


def test_wrong_channel_count_is_a_user_error(tiny):
    with pytest.raises(UlffnError, match="N x 3 x H x W"):
        tiny(torch.randn(1, 1, 32, 32))


def test_input_size_check_is_skipped_while_tracing(tiny):
    traced = torch.jit.trace(tiny, torch.randn(1, 3, 32, 32), check_trace=False)
    with torch.no_grad():
        assert traced(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)


def test_bad_configuration_is_a_user_error():
    with pytest.raises(UlffnError, match="variant"):
        ULFFN(variant="w-x", width=8)
    with pytest.raises(UlffnError, match="width"):
        ULFFN(width=12)


def test_one_training_step_changes_weights_and_lowers_the_loss():
    torch.manual_seed(0)
    model = build_model(ModelConfig(width=8)).train()
    images = torch.randn(2, 3, 32, 32)
    target = (images[:, 0] > 0).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = model.head.weight.detach().clone()
    losses = []
    for _ in range(2):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(images), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, model.head.weight)
    assert losses[-1] < losses[0]


def test_build_model_keeps_the_config():
    config = ModelConfig(variant="w-c", width=16)
    model = build_model(config)
    assert model.config == config
    assert not any(m.dilation[0] > 1 for m in model.modules() if isinstance(m, nn.Conv2d))


def test_model_info_matches_the_model():
    config = ModelConfig(variant="w-ac", width=8)
    info = model_info(config, size=64)
    assert info["parameters"] == sum(p.numel() for p in build_model(config).parameters())
    assert info["output_stride"] == 8 and info["input_size"] == 64
    assert info["variant"] == "w-ac" and info["width"] == 8
    assert isinstance(info["parameters"], int) and isinstance(info["gflops"], float)
    # 4x the pixels, 4x the FLOPs, but for the ASPP image-pooling conv, which always sees one pixel
    assert model_info(config, size=128)["gflops"] == pytest.approx(4 * info["gflops"], rel=1e-4)


def test_model_info_counts_a_multiply_add_as_two_flops():
    model = build_model(ModelConfig(width=8)).eval()
    multiply_adds = []

    def count(conv, inputs, output):
        kh, kw = conv.kernel_size
        multiply_adds.append(output.numel() * conv.in_channels // conv.groups * kh * kw)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    info = model_info(ModelConfig(width=8), size=32)
    assert info["gflops"] * 1e9 == pytest.approx(2 * sum(multiply_adds), rel=1e-9)
    assert "multiply-add counts as 2" in info["flop_convention"]


def test_model_info_rejects_a_bad_size():
    with pytest.raises(UlffnError, match="not divisible by 8"):
        model_info(ModelConfig(width=8), size=60)


def test_check_input_size_edges():
    check_input_size(8, 8)
    with pytest.raises(UlffnError, match="smaller than 8x8"):
        check_input_size(0, 16)

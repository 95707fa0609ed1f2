"""Chapter 08's checks: the reference passes, plausible wrong answers fail (and raise in strict mode), stubs are
"not attempted"."""

import math

from fftd_course import checks, fftd
from fftd_course.fftd import FFTDConfig
from fftd_course.fusion import grid_to_tokens, tokens_to_grid

from check_contract import contract_tests


# --- unpatchify -----------------------------------------------------------------------------------------------------
def unpatchify_by_hand(tokens, p, channels):  # an independent answer (the package's unpatchify is switched off)
    b, n, _ = tokens.shape
    side = math.isqrt(n)
    x = tokens.reshape(b, side, side, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, side * p, side * p)


def unpatchify_plain_reshape(tokens, p, channels):  # right for p = 1 only: ignores the patch layout inside a token
    b, n, _ = tokens.shape
    side = math.isqrt(n) * p
    return tokens.transpose(1, 2).reshape(b, channels, side, side)


def unpatchify_patch_transposed(tokens, p, channels):  # swaps row and column inside each patch
    b, n, _ = tokens.shape
    side = math.isqrt(n)
    x = tokens.reshape(b, side, side, p, p, channels)
    return x.permute(0, 5, 1, 4, 2, 3).reshape(b, channels, side * p, side * p)


def unpatchify_channels_first(tokens, p, channels):  # reads each token as (channel, row, column)
    b, n, _ = tokens.shape
    side = math.isqrt(n)
    x = tokens.reshape(b, side, side, channels, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, side * p, side * p)


# --- resampling parameters ------------------------------------------------------------------------------------------
def levels_reference(input_size, patch_size, multires, at_most=2):
    side, levels = input_size // patch_size, 0
    while multires and levels < at_most and side % 2 == 0:
        side, levels = side // 2, levels + 1
    return levels


def resampling_reference(input_size, patch_size, hidden_size, multires):
    return 2 * levels_reference(input_size, patch_size, multires) * (9 * hidden_size**2 + hidden_size)


def resampling_always_two_levels(input_size, patch_size, hidden_size, multires):  # ignores E8
    return 2 * (2 if multires else 0) * (9 * hidden_size**2 + hidden_size)


def resampling_without_bias(input_size, patch_size, hidden_size, multires):
    return 2 * levels_reference(input_size, patch_size, multires) * 9 * hidden_size**2


def resampling_down_only(input_size, patch_size, hidden_size, multires):
    return levels_reference(input_size, patch_size, multires) * (9 * hidden_size**2 + hidden_size)


def resampling_ignores_multires(input_size, patch_size, hidden_size, multires):
    return resampling_reference(input_size, patch_size, hidden_size, True)


def resampling_halves_to_one(input_size, patch_size, hidden_size, multires):  # no "at most twice"
    return 2 * levels_reference(input_size, patch_size, multires, at_most=99) * (9 * hidden_size**2 + hidden_size)


# --- the hourglass's forward pass -------------------------------------------------------------------------------------
def flawed_forward(levels_from_multires=False, dead_inner_skip=False, swapped_outer_skip=False, no_pos_embed=False):
    """The hourglass's forward pass with some classic mistakes switched on (the defaults give the correct one)."""

    def forward(model, x_t, t, y):
        c = model.config
        x = model.x_embedder(fftd.patchify(x_t, c.patch_size))
        if not no_pos_embed:
            x = x + model.pos_embed
        cond = model.t_embedder(t) + model.y_embedder(y)
        levels = 2 if (levels_from_multires and c.multires) else c.levels

        def down(h, i):
            return grid_to_tokens(model.downsample[i](tokens_to_grid(h))) if levels > i else h

        def up(h, i):
            return grid_to_tokens(model.upsample[i](tokens_to_grid(h))) if levels > i else h

        h1 = model.blocks[0](x, cond)
        h2 = model.blocks[1](down(h1, 0), cond)
        h3 = model.blocks[2](down(h2, 1), cond)
        h4 = model.blocks[3](up(h3, 1), cond)
        if not dead_inner_skip:
            h4 = model.skip_inner(h2, h4)
        h5 = model.blocks[4](up(h4, 0), cond)
        if dead_inner_skip:
            h4 = model.skip_inner(h2, h4)
        h5 = model.skip_outer(h5, h1) if swapped_outer_skip else model.skip_outer(h1, h5)
        return fftd.unpatchify(model.final_layer(h5, cond), c.patch_size, c.in_channels)

    return forward


def calls_the_model(model, x_t, t, y):
    return model(x_t, t, y)


def test_flawed_forward_defaults_are_the_reference():
    import torch
    torch.manual_seed(0)
    for patch in (1, 2, 4):
        model = fftd.FFTD(FFTDConfig(patch_size=patch, hidden_size=16, num_heads=2)).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([3, 400]), torch.tensor([0, 3])
        torch.testing.assert_close(flawed_forward()(model, x, t, y), model(x, t, y))
    assert resampling_reference(4, 1, 288, True) == 4 * 746_784


CASES = [
    (checks.check_unpatchify, unpatchify_by_hand,
     [unpatchify_plain_reshape, unpatchify_patch_transposed, unpatchify_channels_first]),
    (checks.check_resampling_parameters, resampling_reference,
     [resampling_always_two_levels, resampling_without_bias, resampling_down_only, resampling_ignores_multires,
      resampling_halves_to_one]),
    (checks.check_fftd_forward, flawed_forward(),
     [flawed_forward(levels_from_multires=True, dead_inner_skip=True), flawed_forward(levels_from_multires=True),
      flawed_forward(dead_inner_skip=True), flawed_forward(swapped_outer_skip=True), flawed_forward(no_pos_embed=True)]),
]

test_reference_passes_wrong_fails_stub_not_attempted, test_strict_mode_raises_on_every_wrong_answer = contract_tests(
    CASES)


def test_calling_the_model_is_refused(lenient_env):
    """model(...) and FFTD.forward(model, ...) both meet the stand-in of the class's forward."""
    for answer in (calls_the_model, lambda model, x_t, t, y: fftd.FFTD.forward(model, x_t, t, y)):
        result = checks.check_fftd_forward(answer)
        assert result.status == "fail" and "write it yourself" in result.message and "FFTD.forward" in result.message

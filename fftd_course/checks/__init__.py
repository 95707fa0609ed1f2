"""Exercise checks: each takes the learner's function or class and prints PASS, FAIL or "not attempted yet".

See :mod:`fftd_course.checks.core` for how checks behave in notebooks and under ``make test``.
Each chapter's checks live in ``chNN.py``; all are importable from here.
"""

from .ch00 import check_channel_stats, check_count_shared, check_to_pixels
from .ch01 import check_group_norm, check_post_activation_block, check_swish_derivative
from .ch02 import check_attention_fixed, check_pixels_seen, check_shuffle_pixels
from .ch03 import check_ema_codebook_step, check_revive_dead_codes, check_tiny_code_winner, check_vq_straight_through
from .ch04 import check_adaptive_weight, check_receptive_field, check_vanilla_d_loss
from .ch05 import check_code_influence, check_forward_fixed, check_training_step
from .ch06 import check_ddim_sampler, check_ddim_step_v, check_exact_inversion
from .ch07 import check_cbam_channel_weights, check_fuse_fixed, check_spatial_gate_as_linears
from .ch08 import check_fftd_forward, check_resampling_parameters, check_unpatchify
from .ch09 import check_decode_sample, check_guided_eps, check_off_code_distance
from .ch10 import check_resumed_lrs, check_save_checkpoint_atomically, check_training_plan
from .ch11 import check_fair_fid_pair, check_kid_unbiased, check_verdict_from_seeds
from .core import CheckResult, ExerciseFailed, lenient, run_check
from .predict import check_prediction, compare_prediction, with_prediction  # predict, then measure

__all__ = [
    "CheckResult", "ExerciseFailed", "lenient", "run_check",
    "check_count_shared", "check_to_pixels", "check_channel_stats",
    "check_swish_derivative", "check_post_activation_block", "check_group_norm",
    "check_pixels_seen", "check_shuffle_pixels", "check_attention_fixed",
    "check_revive_dead_codes", "check_tiny_code_winner", "check_ema_codebook_step", "check_vq_straight_through",
    "check_vanilla_d_loss", "check_receptive_field", "check_adaptive_weight",
    "check_forward_fixed", "check_training_step", "check_code_influence",
    "check_ddim_step_v", "check_ddim_sampler", "check_exact_inversion",
    "check_cbam_channel_weights", "check_spatial_gate_as_linears", "check_fuse_fixed",
    "check_unpatchify", "check_resampling_parameters", "check_fftd_forward",
    "check_verdict_from_seeds", "check_kid_unbiased", "check_fair_fid_pair",
    "check_guided_eps", "check_decode_sample", "check_off_code_distance",
    "check_training_plan", "check_save_checkpoint_atomically", "check_resumed_lrs",
]

"""The training hot paths compile as one graph (``fullgraph=True``): no host-device synchronisation, no Python
branch on a tensor's value. Each compiled result is compared with eager mode on the same inputs.

``backend="eager"`` runs dynamo's tracing (which is what refuses graph breaks) without generating code, so
these tests are quick on a CPU. The full-scale trainer compiles the same modules with the default backend.
"""

import copy
import warnings

import pytest
import torch

from fftd_course import ivqvae, losses
from fftd_course.quantize import VectorQuantizer


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def random_lpips():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", losses.RandomTrunkWarning)
        return losses.LPIPS(random_trunk=True)


def compiled(fn):
    return torch.compile(fn, backend="eager", fullgraph=True)


def images(b=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g) * 2 - 1


def assert_same_output(got, want):
    x_hat, out = got
    x_hat_e, out_e = want
    torch.testing.assert_close(x_hat, x_hat_e)
    assert torch.equal(out.indices, out_e.indices)
    for name in ("z_q", "loss", "codebook_loss", "commitment_loss", "perplexity"):
        torch.testing.assert_close(getattr(out, name), getattr(out_e, name), msg=name)


def assert_same_buffers(a, b):
    for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers()):
        torch.testing.assert_close(x, y, msg=name)


@pytest.mark.parametrize("quantizer", ["vq", "fsq"])
def test_ivqvae_forward_compiles_as_one_graph_in_train_and_eval_mode(quantizer):
    torch.manual_seed(0)
    model = ivqvae.IVQVAE(ivqvae.get_config("toy-f8", quantizer=quantizer))
    x = images(2, 32, 1)
    if quantizer == "vq":
        # k-means initialisation runs on the host, before compiling (a compiled forward refuses to do it).
        with torch.no_grad():
            model.quantizer.init_codebook(model.encode(images(8, 32, 2)))
    eager = copy.deepcopy(model)
    step = compiled(model)
    for mode in ("train", "eval"):
        model.train(mode == "train")
        eager.train(mode == "train")
        assert_same_output(step(x), eager(x))
        # Training bookkeeping (usage window, per-code counts, recent outputs) happened inside the graph.
        assert_same_buffers(model, eager)
    if quantizer == "vq":
        n = x.shape[0] * model.config.latent_size**2
        assert int(model.quantizer.counts_since_check.sum()) == n  # the compiled step counted its assignments
        assert model.quantizer.maintain(n) == 0  # ... and the host side learns of them here (window not full)
        assert model.quantizer._assignments_since_check == eager.quantizer._assignments_since_check == n


def test_compiled_vq_forward_refuses_to_initialise_the_codebook():
    vq = VectorQuantizer(16, 4, kmeans_init=True)
    with pytest.raises(Exception, match="init_codebook|compile"):
        compiled(vq)(torch.randn(1, 4, 4, 4))
    torch._dynamo.reset()
    vq(torch.randn(1, 4, 4, 4))  # one eager training step initialises it; then it compiles
    compiled(vq)(torch.randn(1, 4, 4, 4))


def test_maintain_after_compiled_steps_replaces_the_same_dead_codes_as_eager():
    torch.manual_seed(0)
    # taming's tiny initial codes: almost every code is dead, so each check moves many of them.
    eager = VectorQuantizer(64, 4, replace_dead_codes=True, usage_window=32, buffer_size=48)
    model = copy.deepcopy(eager)
    step = compiled(model)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(1, 4, 4, 4, generator=g) * 2 for _ in range(7)]  # 16 assignments each
    moved = []
    for i, z in enumerate(batches):
        torch.manual_seed(100 + i)  # the replacement draws random buffer rows: same draws on both sides
        want = eager(z)
        torch.manual_seed(100 + i)
        got = step(z)
        moved.append(model.maintain(got.indices.numel()))
        assert torch.equal(got.indices, want.indices), i
        torch.testing.assert_close(model.codebook, eager.codebook)
    # A check runs on every second step (window 32 = 2 x 16 assignments), and each one moves dead codes.
    assert not any(moved[0::2]) and all(moved[1::2]), moved
    assert int(model.replaced_total) == int(eager.replaced_total) == sum(moved) > 0
    assert_same_buffers(model, eager)


def test_host_side_counters_follow_the_state_dict():
    vq = VectorQuantizer(8, 2, kmeans_init=True, replace_dead_codes=True, usage_window=100)
    vq(torch.randn(2, 2, 3, 3))  # initialises and counts 18 assignments
    fresh = VectorQuantizer(8, 2, kmeans_init=True, replace_dead_codes=True, usage_window=100)
    assert fresh._needs_init and fresh._assignments_since_check == 0
    fresh.load_state_dict(vq.state_dict())
    assert not fresh._needs_init and fresh._assignments_since_check == 18
    assert "initialized" in vq.state_dict() and "counts_since_check" in vq.state_dict()
    with pytest.raises(ValueError, match="numel"):
        vq.maintain(torch.tensor(18))  # a tensor would be read on the host: the count is a Python int


def test_lpips_compiles_and_its_range_check_stays_in_eager_cpu_mode(random_lpips):
    x, x_hat = images(2, 32, 3), images(2, 32, 4)
    torch.testing.assert_close(compiled(random_lpips)(x_hat, x), random_lpips(x_hat, x))
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        random_lpips(x_hat * 255, x)  # eager, CPU: the learner still gets the clear error


def make_hybrid(random_lpips):
    torch.manual_seed(0)
    disc = losses.NLayerDiscriminator(ndf=8, n_layers=2)
    return losses.HybridLoss(disc, random_lpips, weighting="paper", lambda_d=0.3, disc_start=5, check_finite=False)


@pytest.mark.parametrize("step", [0, 10], ids=["before-disc_start", "after-disc_start"])
def test_hybrid_loss_and_discriminator_loss_compile_as_one_graph(random_lpips, step):
    """weighting="paper" only: the adaptive weight calls torch.autograd.grad, which dynamo does not trace
    inside one graph, so a trainer with weighting="adaptive" leaves HybridLoss eager (see its docstring)."""
    hybrid = make_hybrid(random_lpips)
    x, vq = images(2, 32, 5), torch.tensor(0.25)
    grads = []
    for fn in (compiled(hybrid), hybrid):
        x_hat = images(2, 32, 6).requires_grad_(True)
        total, logs = fn(x, x_hat, step, vq_loss=vq)
        total.backward()
        grads.append((total.detach(), logs, x_hat.grad))
    (total, logs, grad), (total_e, logs_e, grad_e) = grads
    torch.testing.assert_close(total, total_e)
    torch.testing.assert_close(grad, grad_e)
    assert logs.keys() == logs_e.keys()
    for key in logs:
        torch.testing.assert_close(logs[key], logs_e[key], msg=key)
    assert float(logs["disc_active"]) == float(step >= 5)
    assert all(p.grad is None for p in hybrid.discriminator.parameters())  # the generator's pass leaves it alone

    x_hat = images(2, 32, 6)
    got, got_logs = compiled(hybrid.discriminator_loss)(x, x_hat, step)
    want, want_logs = hybrid.discriminator_loss(x, x_hat, step)
    if step < 5:
        assert got is None and want is None
    else:
        torch.testing.assert_close(got, want)
    for key in want_logs:
        torch.testing.assert_close(got_logs[key], want_logs[key], msg=key)

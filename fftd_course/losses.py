"""The IVQ-VAE's hybrid loss (paper section 3.1.3, eq. 11-15) and the training guard against NaN/inf.

``L_total = L_rec + L_P + lambda_d L_G + lambda_vq L_vq`` (eq. 15), with

* ``L_rec``: mean absolute error (eq. 11), :func:`l1_loss`;
* ``L_P``: LPIPS on VGG16 features (eq. 12), :class:`LPIPS`, through the ``lpips`` package;
* ``L_G = -E[Dis(x_hat)]`` (eq. 13), :func:`generator_loss`, against a PatchGAN
  :class:`NLayerDiscriminator` trained with the hinge loss :func:`hinge_d_loss` (eq. 14, see E3);
* ``L_vq``: the quantizer's codebook + commitment loss (computed by :mod:`fftd_course.quantize`).

:class:`HybridLoss` combines them and returns every term for logging. Choices the paper leaves open
(numbered in ``docs/ERRATA.md``) are named where the code makes them:

* E3: eq. 14 as printed is linear in the logits and has no minimum; :func:`hinge_d_loss` is the
  hinge form it means.
* E11: ``disc_start`` gates both the discriminator's update and the generator's adversarial term.
* E22: eq. 15 fixes ``lambda_d + lambda_vq = 1`` without values (``weighting="paper"``); taming's adaptive
  weight (``weighting="adaptive"``, :func:`adaptive_weight`) is the alternative, and the default.
* E23, the discriminator's normalisation: the paper trains at batch size 1, where BatchNorm's statistics come
  from one image; :class:`NLayerDiscriminator` defaults to GroupNorm and offers taming's BatchNorm.

Offline weights: LPIPS needs torchvision's VGG16 file ``vgg16-397923af.pth`` in
``torch.hub.get_dir()/checkpoints``. :class:`LPIPS` looks for it first and, when it is missing, raises
:class:`LPIPSWeightsMissing` with what to do; it never starts a download. ``LPIPS(random_trunk=True)``
(lpips' ``pnet_rand``) runs without the file, warns, and is flagged ``random_trunk``: it proves the
wiring, its numbers are not perceptual distances.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "VGG16_FILE",
    "VGG16_URL",
    "vgg16_weights_path",
    "lpips_weights_available",
    "LPIPSWeightsMissing",
    "RandomTrunkWarning",
    "LPIPS",
    "l1_loss",
    "NLayerDiscriminator",
    "generator_loss",
    "hinge_d_loss",
    "adaptive_weight",
    "NonFiniteLossError",
    "check_finite",
    "HybridLoss",
]

VGG16_FILE = "vgg16-397923af.pth"
VGG16_URL = "https://download.pytorch.org/models/" + VGG16_FILE


# ---- LPIPS (eq. 12), offline-aware ---------------------------------------------------------------

def vgg16_weights_path() -> Path:
    """Where torchvision keeps (and LPIPS looks for) the VGG16 ImageNet weights.

    ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``; ``torch.hub.get_dir()`` is
    ``$TORCH_HOME/hub`` (default ``~/.cache/torch/hub``).
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILE


def lpips_weights_available() -> bool:
    """Whether the VGG16 file that real LPIPS needs is on this machine (nothing is downloaded)."""
    return vgg16_weights_path().is_file()


class LPIPSWeightsMissing(FileNotFoundError):
    """The VGG16 trunk of LPIPS is not on this machine; the message says how to get it."""


class RandomTrunkWarning(UserWarning):
    """LPIPS runs on a randomly initialised VGG16: distances prove wiring, they are not perceptual."""


def _how_to_get(path: Path) -> str:
    return ("To get the file (about 528 MB), on a machine with internet run\n"
            "    python -c \"import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')\"\n"
            f"(or download {VGG16_URL}) and copy {VGG16_FILE} to {path.parent}/ here. "
            "To test the wiring without it, use LPIPS(random_trunk=True): its numbers are NOT perceptual distances.")


def _missing_message(path: Path) -> str:
    return (f"LPIPS needs torchvision's VGG16 ImageNet weights, and {path} does not exist "
            "(the folder is torch.hub.get_dir()/checkpoints; set TORCH_HOME to use another one). "
            "Nothing was downloaded. " + _how_to_get(path))


class LPIPS(nn.Module):
    """LPIPS distance ``L_P(x_hat, x)`` on VGG16 features (eq. 12), one value per image.

    Inputs are ``(B, 3, H, W)`` images in ``[-1, 1]`` (the decoder's tanh range); the output is ``(B,)``.
    The network is the ``lpips`` package's (v0.1 linear heads, shipped in its wheel). Its VGG16 trunk is
    read from :func:`vgg16_weights_path` by this class, after checking the file exists: a missing file
    raises :class:`LPIPSWeightsMissing` at once instead of letting torchvision try a download.

    ``random_trunk=True`` keeps the trunk randomly initialised (lpips' ``pnet_rand``). The linear heads
    were calibrated on the real trunk's features, so the result is a distance between random features:
    good for testing shapes and gradients, not a perceptual measure. Such an instance warns with
    :class:`RandomTrunkWarning`, has ``random_trunk = True``, and says so in its ``repr``.

    All weights are frozen and the module stays in eval mode even inside a model put in training mode
    (lpips' heads have dropout). Its weights are not part of ``state_dict()``: they always come from the
    files, so a checkpoint neither carries 58 MB of VGG16 nor overwrites a real trunk with a random one.
    """

    def __init__(self, random_trunk: bool = False, weights_path: str | Path | None = None):
        super().__init__()
        path = Path(weights_path) if weights_path is not None else vgg16_weights_path()
        if not random_trunk and not path.is_file():
            raise LPIPSWeightsMissing(_missing_message(path))
        state = None if random_trunk else _read_vgg16(path)  # a bad file fails before the network is built
        import lpips  # imported here: the package is only needed once LPIPS is used

        with warnings.catch_warnings():
            # lpips 0.1.4 builds the trunk with torchvision's deprecated `pretrained=False` argument.
            warnings.filterwarnings("ignore", message=".*(pretrained|weights).*", category=UserWarning)
            # pnet_rand=True: lpips never asks torchvision for weights; the real ones are loaded below.
            self.net = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False)
        self.random_trunk = bool(random_trunk)
        self.weights_path = None if random_trunk else path
        if random_trunk:
            warnings.warn("LPIPS with a RANDOM VGG16 trunk (random_trunk=True): the distances prove the wiring "
                          "only, they are not perceptual. " + f"Real LPIPS needs {path}.", RandomTrunkWarning,
                          stacklevel=2)
        else:
            self._load_trunk(state, path)
        self.net.requires_grad_(False)
        self.net.eval()
        # torch >= 2.5 names these hooks publicly; 2.4 has only the private spellings.
        getattr(self, "register_state_dict_post_hook", getattr(self, "_register_state_dict_hook"))(_drop_own_keys)
        if hasattr(self, "register_load_state_dict_pre_hook"):
            self.register_load_state_dict_pre_hook(_keep_own_weights)
        else:  # pragma: no cover - torch 2.4
            self._register_load_state_dict_pre_hook(_keep_own_weights, with_module=True)

    def _load_trunk(self, state: Mapping[str, torch.Tensor], path: Path) -> None:
        # lpips splits torchvision's `features` Sequential into slices that keep the original indices as names.
        for slice_ in (self.net.net.slice1, self.net.net.slice2, self.net.net.slice3, self.net.net.slice4, self.net.net.slice5):
            for index, layer in slice_.named_children():
                if not isinstance(layer, nn.Conv2d):
                    continue
                try:
                    with torch.no_grad():
                        layer.weight.copy_(state[f"features.{index}.weight"])
                        layer.bias.copy_(state[f"features.{index}.bias"])
                except (KeyError, RuntimeError) as e:
                    raise LPIPSWeightsMissing(f"{path} does not hold torchvision's VGG16 weights (layer features.{index}: "
                                              f"{type(e).__name__} {e}). Replace it. " + _how_to_get(path)) from None

    def train(self, mode: bool = True) -> "LPIPS":
        # Never leave eval mode: the heads' dropout would make the loss random.
        return super().train(False)

    def extra_repr(self) -> str:
        if self.random_trunk:
            return "trunk=RANDOM VGG16 (wiring only, not perceptual)"
        return f"trunk=VGG16 ImageNet from {self.weights_path}"

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        _check_pair(x_hat, x, "LPIPS")
        # The range is checked only where reading values is free: on CPU tensors, outside torch.compile. On a
        # GPU the check would stop the device on every call (a host-device synchronisation).
        if _values_readable(x, x_hat) and (x.abs().max() > 1.5 or x_hat.abs().max() > 1.5):
            raise ValueError("LPIPS expects images in [-1, 1] (got values beyond +-1.5); map [0, 1] images with "
                             "x * 2 - 1 and [0, 255] ones with x / 127.5 - 1")
        return self.net(x_hat, x).flatten()  # (B, 1, 1, 1) -> (B,)


def _read_vgg16(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        try:  # memory-map: only the 58 MB of convolutions are read, not the 470 MB classifier
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in the legacy (non-zip) format cannot be memory-mapped
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download or another file under the right name
        raise LPIPSWeightsMissing(f"{path} exists but could not be read as VGG16 weights ({type(e).__name__}: {e}). "
                                  "Delete it and fetch it again. " + _how_to_get(path)) from None


def _drop_own_keys(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        del state_dict[key]


def _keep_own_weights(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    # Loading a checkpoint must neither miss LPIPS' keys nor overwrite its weights: offer the current ones.
    state_dict.update(module.net.state_dict(prefix=prefix + "net."))


def _values_readable(*tensors: torch.Tensor) -> bool:
    # Reading a value (a comparison used in an `if`) of a CUDA tensor waits for the device; under torch.compile
    # it would break the graph. Value checks run on CPU tensors in eager mode only (FFTD.check_inputs does the same).
    return not torch.compiler.is_compiling() and all(t.device.type == "cpu" for t in tensors)


def _check_pair(x_hat: torch.Tensor, x: torch.Tensor, who: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{who} expects (B, 3, H, W) images, got x of shape {tuple(x.shape)}")
    if x_hat.shape != x.shape:
        raise ValueError(f"{who}: x_hat {tuple(x_hat.shape)} and x {tuple(x.shape)} must have the same shape")


def l1_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reconstruction loss ``L_rec = ||x_hat - x||_1`` (eq. 11), as the mean over all elements.

    The paper writes a norm; the mean (taming's choice) keeps the value independent of the image size
    and batch size, so that the weights of eq. 15 mean the same at 32 px and at 256 px.
    """
    if x_hat.shape != x.shape:
        raise ValueError(f"l1_loss: x_hat {tuple(x_hat.shape)} and x {tuple(x.shape)} must have the same shape")
    return (x_hat - x).abs().mean()


# ---- PatchGAN discriminator and adversarial losses (eq. 13, 14) ----------------------------------

Norm = Literal["group", "batch", "none"]


def _norm_layer(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return nn.Identity()


class NLayerDiscriminator(nn.Module):
    """PatchGAN discriminator ``Dis`` of eq. 13-14: a map of real/fake logits, one per image patch.

    taming's ``NLayerDiscriminator`` (pix2pix): ``n_layers`` 4x4 convolutions of stride 2 (channels
    ``ndf * min(2^i, 8)``), one 4x4 of stride 1, then a 4x4 convolution to one logit per position, with
    LeakyReLU(0.2) and weights drawn from N(0, 0.02) (norm scales from N(1, 0.02)). ``(B, C, H, W) ->
    (B, 1, H', W')``; each logit sees a :attr:`receptive_field` x :attr:`receptive_field` patch.

    ``norm``: the paper trains at batch size 1 and does not say which normalisation its discriminator
    uses. taming's is BatchNorm (``norm="batch"``), whose statistics then come from one image and differ
    between training and evaluation. The default here is ``"group"``: GroupNorm normalises each image on
    its own, so the discriminator behaves the same at every batch size (chapter 01's argument for the
    autoencoder). ``"none"`` drops normalisation (the convolutions then get biases).
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3, norm: Norm = "group"):
        super().__init__()
        if norm not in ("group", "batch", "none"):
            raise ValueError(f"norm must be 'group', 'batch' or 'none', got {norm!r}")
        if n_layers < 1 or ndf < 1 or in_channels < 1:
            raise ValueError(f"need n_layers >= 1, ndf >= 1, in_channels >= 1; got {n_layers}, {ndf}, {in_channels}")
        self.in_channels, self.n_layers, self.norm = in_channels, n_layers, norm
        use_bias = norm == "none"  # a norm layer's shift makes a conv bias redundant
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for i in range(1, n_layers + 1):
            prev, mult = mult, min(2**i, 8)
            stride = 2 if i < n_layers else 1  # the last of these keeps the resolution
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=use_bias),
                       _norm_layer(norm, ndf * mult), nn.LeakyReLU(0.2)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """N(0, 0.02) convolutions, N(1, 0.02) norm scales, zero shifts (DCGAN / pix2pix / taming)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    @property
    def receptive_field(self) -> int:
        """Side in pixels of the input patch that one output logit depends on (70 for n_layers=3)."""
        strides = [2] * self.n_layers + [1, 1]
        rf = 1
        for s in reversed(strides):
            rf = (rf - 1) * s + 4
        return rf

    @property
    def min_size(self) -> int:
        """Smallest input side that leaves at least one logit."""
        return 3 * 2**self.n_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"NLayerDiscriminator expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"NLayerDiscriminator with n_layers={self.n_layers} needs images of at least "
                             f"{self.min_size} px, got {tuple(x.shape[-2:])}; use fewer layers for small images")
        return self.main(x)  # (B, C, H, W) -> (B, 1, H', W')


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Adversarial loss of the autoencoder ``L_G = -E[Dis(x_hat)]`` (eq. 13): push the logits of
    reconstructions up, towards what the discriminator calls real. The mean runs over images and patches."""
    return -logits_fake.mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss ``1/2 (E[relu(1 - Dis(x))] + E[relu(1 + Dis(x_hat))])``: the hinge form of eq. 14.

    E3: eq. 14 prints ``1/2 (E[1 - Dis(x)] + E[1 + Dis(x_hat)])``, which equals
    ``1 + 1/2 (E[Dis(x_hat)] - E[Dis(x)])``. That is linear in the logits: its gradient is a constant
    +-1/2 however well the discriminator already separates real from fake, so it has no minimum and
    training it drives ``Dis(x) -> +inf`` and ``Dis(x_hat) -> -inf`` (then ``L_G`` of eq. 13 explodes).
    The relu stops pushing once a real patch scores above 1 and a fake one below -1: the loss is bounded
    below by 0 and reaches it at that margin. This is taming's ``hinge_d_loss``, which the paper's form
    matches apart from the two relus.
    """
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float = 1.0, eps: float = 1e-4, max_weight: float = 1e4) -> torch.Tensor:
    """taming's adaptive weight of the adversarial term: ``disc_weight * ||grad L_rec|| / (||grad L_G|| + eps)``.

    Both gradients are taken with respect to ``last_layer``, the weight of the decoder's final convolution,
    so the adversarial term pushes that layer about as hard as the reconstruction loss does, whatever the
    scale of the discriminator's logits. The ratio is clamped to ``[0, max_weight]`` and detached: it is a
    weight, not something to optimise. This replaces eq. 15's fixed ``lambda_d`` (weighting="adaptive").
    """
    if not last_layer.requires_grad:
        raise ValueError("adaptive_weight needs gradients through last_layer: pass the decoder's final conv weight "
                         "(a parameter that requires grad) and call it with gradients enabled")
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach() * disc_weight


# ---- the training guard against NaN/inf --------------------------------------------------------

class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; ``.step`` and ``.term`` say when and which."""

    def __init__(self, message: str, step: int, term: str):
        super().__init__(message)
        self.step, self.term = step, term


def check_finite(terms: Mapping[str, torch.Tensor | float], step: int, inputs: Mapping[str, torch.Tensor] | None = None) -> None:
    """Raise :class:`NonFiniteLossError` naming ``step`` and the first term that is NaN or inf.

    ``terms`` maps names to scalar losses (tensors or floats), in the order they are computed, so the
    first bad one is where the trouble started. One device synchronisation checks them all; the slow
    diagnosis (which term, and whether an input such as the model output was already bad) runs only on
    failure. ``inputs`` are tensors to blame in the message when they hold NaN/inf themselves.
    """
    if not terms:
        return
    device = next((v.device for v in terms.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    values = [torch.as_tensor(v).detach().to(device=device, dtype=torch.float32).reshape(-1) for v in terms.values()]
    if bool(torch.isfinite(torch.cat(values)).all()):  # the one synchronisation when all is well
        return
    bad = next(name for name, v in zip(terms, values) if not bool(torch.isfinite(v).all()))
    shown = ", ".join(f"{name}={float(v.float().mean()):.4g}" for name, v in zip(terms, values))
    blamed = [name for name, t in (inputs or {}).items() if not bool(torch.isfinite(t.detach()).all())]
    cause = (f" The input(s) {', '.join(blamed)} already held NaN/inf: the model blew up before the loss."
             if blamed else "")
    raise NonFiniteLossError(
        f"step {step}: the loss term '{bad}' is not finite ({shown}).{cause} Training stopped here: lower the "
        "learning rate, check that the data are finite and in [-1, 1], or resume from the last checkpoint.",
        step=step, term=bad)


# ---- the hybrid loss (eq. 15) --------------------------------------------------------------------

Weighting = Literal["adaptive", "paper"]


class HybridLoss(nn.Module):
    """``L_total = L_rec + L_P + lambda_d L_G + lambda_vq L_vq`` (eq. 15) and the discriminator's hinge loss.

    Arguments:

    * ``discriminator``: the PatchGAN (default ``NLayerDiscriminator()``); ``perceptual``: an :class:`LPIPS`
      (default ``LPIPS()``, the real one, which raises :class:`LPIPSWeightsMissing` when the VGG16 file is
      missing; pass ``LPIPS(random_trunk=True)`` to run without it). With ``perceptual_weight=0`` no LPIPS
      is built.
    * ``weighting="paper"``: fixed ``lambda_d`` and ``lambda_vq = 1 - lambda_d`` (eq. 15's constraint;
      the paper gives no values, ``lambda_d=0.1`` is our default).
      ``weighting="adaptive"`` (default): ``lambda_d = disc_weight * ||grad L_rec|| / ||grad L_G||`` on
      ``last_layer`` (:func:`adaptive_weight`; ``disc_weight=0.75`` as in latent-diffusion's VQ-f16 config)
      and ``lambda_vq = codebook_weight`` (1.0, as in taming).
    * ``disc_start``: the first step at which the discriminator trains AND the generator's adversarial
      term counts (E11; Algorithm 1 uses 250k of 4M steps). Before it ``lambda_d = 0`` and the
      discriminator is not even run.

    ``forward(x, x_hat, step, vq_loss=None, last_layer=None)`` returns ``(total, logs)``;
    :meth:`discriminator_loss` returns the discriminator's ``(loss or None, logs)``. ``logs`` maps every
    term's name to a detached 0-dim tensor (call ``float()`` to print). Every term is checked with
    :func:`check_finite` where that costs no device synchronisation: by default (``check_finite=None``) on CPU
    tensors in eager mode only, so the CPU chapters stop at the first NaN while a GPU step reads nothing on the
    host (the trainer checks its losses at log and checkpoint time). ``True`` checks everywhere (one
    synchronisation per call on a GPU), ``False`` never.
    ``torch.compile(fullgraph=True)`` traces both in one graph, with one exception: ``weighting="adaptive"``
    once the discriminator is on, because :func:`adaptive_weight` calls ``torch.autograd.grad``, which
    dynamo does not trace inside a graph. A trainer with the adaptive weight compiles the autoencoder, the
    LPIPS network and the discriminator and leaves this small module eager.
    """

    def __init__(self, discriminator: nn.Module | None = None, perceptual: LPIPS | None = None, *,
                 l1_weight: float = 1.0, perceptual_weight: float = 1.0, weighting: Weighting = "adaptive",
                 lambda_d: float = 0.1, disc_weight: float = 0.75, codebook_weight: float = 1.0,
                 disc_start: int = 0, check_finite: bool | None = None, reconstruction: str = "l1"):
        super().__init__()
        if reconstruction not in ("l1", "l2"):
            raise ValueError(f"reconstruction must be 'l1' (eq. 11) or 'l2' (the plain VQ-VAE's squared error, Table "
                             f"7's ablation), got {reconstruction!r}")
        if weighting not in ("adaptive", "paper"):
            raise ValueError(f"weighting must be 'adaptive' or 'paper', got {weighting!r}")
        if not 0.0 <= lambda_d <= 1.0:
            raise ValueError(f"eq. 15 needs lambda_d + lambda_vq = 1 with both >= 0, so lambda_d in [0, 1]; got {lambda_d}")
        for name, value in [("l1_weight", l1_weight), ("perceptual_weight", perceptual_weight),
                            ("disc_weight", disc_weight), ("codebook_weight", codebook_weight), ("disc_start", disc_start)]:
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.discriminator = discriminator if discriminator is not None else NLayerDiscriminator()
        if perceptual is None and perceptual_weight > 0:
            perceptual = LPIPS()
        self.perceptual = perceptual
        self.l1_weight, self.perceptual_weight = float(l1_weight), float(perceptual_weight)
        self.weighting, self.lambda_d = weighting, float(lambda_d)
        self.disc_weight, self.codebook_weight = float(disc_weight), float(codebook_weight)
        self.disc_start, self.check_finite = int(disc_start), check_finite
        self.reconstruction = reconstruction

    @property
    def random_trunk(self) -> bool:
        """True when the perceptual term runs on a random VGG16 (wiring only, not perceptual)."""
        return self.perceptual is not None and self.perceptual.random_trunk

    @property
    def lambda_vq(self) -> float:
        """The weight of ``L_vq``: ``1 - lambda_d`` (eq. 15, weighting="paper") or ``codebook_weight``."""
        return 1.0 - self.lambda_d if self.weighting == "paper" else self.codebook_weight

    def _checking(self, value: torch.Tensor) -> bool:
        """Whether to run :func:`check_finite` now: ``check_finite`` True/False, or by default (None) only where a
        value is read without waiting for a device (CPU tensors, eager mode): no host read in a GPU hot path."""
        if self.check_finite is None:
            return _values_readable(value)
        return bool(self.check_finite)

    def discriminator_active(self, step: int) -> bool:
        """Whether the adversarial part is on at ``step`` (E11): ``step >= disc_start``."""
        return step >= self.disc_start

    def extra_repr(self) -> str:
        weights = (f"lambda_d={self.lambda_d}, lambda_vq={self.lambda_vq}" if self.weighting == "paper"
                   else f"adaptive, disc_weight={self.disc_weight}, codebook_weight={self.codebook_weight}")
        note = ", perceptual on a RANDOM trunk (wiring only)" if self.random_trunk else ""
        return f"weighting={self.weighting} ({weights}), disc_start={self.disc_start}{note}"

    def _judge_frozen(self, x_hat: torch.Tensor) -> torch.Tensor:
        # The generator's loss must not fill the discriminator's .grad: it judges x_hat with detached copies of
        # its parameters (same values, no gradient path), while the gradient still flows back to x_hat.
        # Detaching, unlike toggling requires_grad, is traced by torch.compile in one graph.
        frozen = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        return torch.func.functional_call(self.discriminator, frozen, (x_hat,))

    def forward(self, x: torch.Tensor, x_hat: torch.Tensor, step: int, vq_loss: torch.Tensor | None = None,
                last_layer: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The autoencoder's loss (eq. 15) at training step ``step``: ``(total, logs)``.

        ``x`` and ``x_hat`` are ``(B, 3, H, W)`` in ``[-1, 1]``; ``vq_loss`` is the quantizer's codebook +
        commitment loss (None for a plain autoencoder); ``last_layer`` is the decoder's final conv weight,
        needed by the adaptive weighting once the discriminator is on. Under ``torch.no_grad()`` (evaluation)
        the adaptive weight cannot be computed and the adversarial term is logged with weight 0, as in taming.
        """
        _check_pair(x_hat, x, "HybridLoss")
        zero = x_hat.new_zeros(())
        l1 = l1_loss(x_hat, x)
        p_loss = self.perceptual(x_hat, x).mean() if self.perceptual_weight > 0 else zero
        pixel = l1 if self.reconstruction == "l1" else (x_hat - x).pow(2).mean()
        rec = self.l1_weight * pixel + self.perceptual_weight * p_loss
        vq = vq_loss if vq_loss is not None else zero
        active = self.discriminator_active(step)
        g_loss, weight_g = zero, zero
        if active:
            g_loss = generator_loss(self._judge_frozen(x_hat))
            if self.weighting == "paper":
                weight_g = zero + self.lambda_d
            elif torch.is_grad_enabled():
                if last_layer is None:
                    raise ValueError("weighting='adaptive' needs last_layer= the decoder's final conv weight "
                                     "(or use weighting='paper' with a fixed lambda_d)")
                weight_g = adaptive_weight(rec, g_loss, last_layer, self.disc_weight)
        total = rec + weight_g * g_loss + self.lambda_vq * vq
        logs = {"l1": l1, "lpips": p_loss, "rec": rec, "vq": vq, "g_loss": g_loss, "weight_g": weight_g,
                "weight_vq": zero + self.lambda_vq, "disc_active": zero + float(active), "total": total}
        logs = {k: v.detach() for k, v in logs.items()}
        if self._checking(total):
            check_finite({k: logs[k] for k in ("l1", "lpips", "vq", "g_loss", "weight_g", "total")}, step,
                         inputs={"x": x, "x_hat": x_hat})
        return total, logs

    def discriminator_loss(self, x: torch.Tensor, x_hat: torch.Tensor, step: int) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The discriminator's hinge loss (eq. 14, E3) at ``step``: ``(loss, logs)``.

        ``x_hat`` is detached here: this loss trains the discriminator only. Before ``disc_start``
        (E11) nothing runs and ``loss`` is None: skip the discriminator's update then.
        """
        _check_pair(x_hat, x, "HybridLoss.discriminator_loss")
        zero = x.new_zeros(())
        if not self.discriminator_active(step):
            logs = {"d_loss": zero, "logits_real": zero, "logits_fake": zero, "disc_active": zero}
            return None, logs
        logits_real = self.discriminator(x.contiguous())
        logits_fake = self.discriminator(x_hat.detach().contiguous())
        loss = hinge_d_loss(logits_real, logits_fake)
        logs = {"d_loss": loss.detach(), "logits_real": logits_real.detach().mean(),
                "logits_fake": logits_fake.detach().mean(), "disc_active": zero + 1.0}
        if self._checking(logs["d_loss"]):
            check_finite({k: logs[k] for k in ("logits_real", "logits_fake", "d_loss")}, step,
                         inputs={"x": x, "x_hat": x_hat})
        return loss, logs

"""The stages the engine trains, one module each; importing this package registers them (``registry.STAGES``).

* :mod:`.ivqvae`: stage 1, the IVQ-VAE (``train-ivqvae``, result ``ivqvae.pt``);
* :mod:`.latent_diffusion`: stage 2, the FFTD on stage 1's latents (``train-fftd``, result ``latent_diffusion.pt``).

A new stage (the pixel-space DDPM baseline, say) is a module here with one :class:`~.base.Stage` subclass
decorated with ``@register``, and one import line below.
"""

from . import ivqvae, latent_diffusion  # noqa: F401 - registers the stages
from .base import Stage

__all__ = ["Stage"]

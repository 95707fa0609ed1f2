"""The stages the engine trains, one module each; importing this package registers them (``registry.STAGES``).

* :mod:`.ivqvae`: stage 1, the IVQ-VAE (``train-ivqvae``, result ``ivqvae.pt``);
* :mod:`.latent_diffusion`: stage 2, the FFTD on stage 1's latents (``train-fftd``, result ``latent_diffusion.pt``);
* :mod:`.ddpm`: the pixel-space DDPM baseline of section 4.3.4, a U-Net on the images (``train-ddpm``, result
  ``pixel_diffusion.pt``).

A new stage is a module here with one :class:`~.base.Stage` subclass
decorated with ``@register``, and one import line below.
"""

from . import ddpm, ivqvae, latent_diffusion  # noqa: F401 - registers the stages
from .base import Stage

__all__ = ["Stage"]

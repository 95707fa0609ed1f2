"""Draw the README's pictures from the package (python docs/make_figures.py; about half a minute on a CPU).

Writes docs/toy_faces.png and docs/ivqvae_reconstructions.png and prints the numbers the README quotes.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from fftd_course import data, ivqvae, losses, pipeline, viz  # noqa: E402
from fftd_course.quantize import codebook_usage  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    torch.manual_seed(0)
    images, labels = data.make_toy_faces(300, size=64, seed=0)
    fig = viz.show_class_grid(images, labels, data.CLASSES, per_class=10, scale=0.9)
    fig.savefig(HERE / "toy_faces.png", dpi=80, bbox_inches="tight")
    plt.close(fig)

    # Chapter 05's CPU recipe: toy-f8 (a 4x4 latent of 256 codes), L1 + L_vq, 250 steps of batch 16.
    train, _ = data.make_toy_faces(4096, size=32, seed=0)
    held, _ = data.make_toy_faces(256, size=32, seed=1)
    model = ivqvae.IVQVAE("toy-f8")
    loss = losses.HybridLoss(perceptual_weight=0.0, discriminator=losses.NLayerDiscriminator(ndf=32, n_layers=2),
                             weighting="paper", lambda_d=0.1, disc_start=250)
    start = time.perf_counter()
    pipeline.train_ivqvae(model, loss, train, 250, batch_size=16, lr=5e-4, progress=False)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        x_hat, q = model(held)
    ax = viz.show_images(torch.cat([held[:12], x_hat[:12]]), nrow=12, scale=0.9)
    ax.figure.savefig(HERE / "ivqvae_reconstructions.png", dpi=80, bbox_inches="tight")
    usage = codebook_usage(q.indices, model.config.num_codes)
    print(f"toy-f8 trained for 250 steps in {seconds:.1f} s on {platform.processor() or platform.machine()} "
          f"({torch.get_num_threads()} threads); held-out L1 {(x_hat - held).abs().mean():.4f}, "
          f"{usage.distinct}/{usage.num_codes} codes used on {len(held)} held-out faces")


if __name__ == "__main__":
    main()

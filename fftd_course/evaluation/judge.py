"""A small class judge for the 32 px toy faces: how often is a generated "cat" seen as a cat?

Class accuracy is the demo's second quality measure beside FID (issue 7): a classifier trained on
real toy faces labels class-conditional samples. Samples come out of the stage-1 decoder, whose
images are softer than the sharp rendered faces; a classifier trained on sharp faces alone labels such
images at chance (measured in issue 7: 37% on toy-f8 reconstructions). So :func:`train_judge` teaches it
the decoder's style: it trains on the real faces *and* on their stage-1 reconstructions (pass them as
``extra_images``), with a random Gaussian blur on part of each batch. The accuracy on stage-1
reconstructions of held-out faces is then the ceiling for any sample: a sample cannot be more
recognisable than what the decoder can draw.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

__all__ = ["ToyJudge", "random_blur", "train_judge", "predict", "accuracy"]


class ToyJudge(nn.Module):
    """A small CNN, ``(B, 3, 32, 32) -> logits (B, num_classes)``.

    Three stages of 3x3 convolution, BatchNorm, ReLU and 2x2 max pooling (32 -> 16 -> 8 -> 4 px, widths
    ``width``, ``2 width``, ``4 width``), one more convolution at 4x4, global average pooling and a linear
    head. One convolution per stage keeps training to seconds on a CPU (about 13 MFLOP-multiply-adds per
    image at ``width=32``).
    """

    def __init__(self, num_classes: int = 3, width: int = 32):
        super().__init__()

        def conv(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(*conv(3, width), nn.MaxPool2d(2), *conv(width, 2 * width), nn.MaxPool2d(2),
                                      *conv(2 * width, 4 * width), nn.MaxPool2d(2), *conv(4 * width, 4 * width))
        self.head = nn.Linear(4 * width, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def random_blur(x: torch.Tensor, max_sigma: float = 1.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Blur each image with a Gaussian of its own random ``sigma`` in ``[0, max_sigma]`` (5x5 kernel)."""
    b = x.shape[0]
    sigma = torch.rand(b, generator=generator).to(x.device) * max_sigma + 1e-3
    r = torch.arange(-2, 3, device=x.device, dtype=x.dtype)
    k1 = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None].to(x.dtype) ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)  # (B, 5)
    k2 = k1[:, :, None] * k1[:, None, :]  # (B, 5, 5)
    c = x.shape[1]
    weight = k2[:, None].repeat_interleave(c, 0)  # (B*C, 1, 5, 5): one kernel per image and channel
    out = F.conv2d(F.pad(x.reshape(1, b * c, *x.shape[2:]), (2, 2, 2, 2), mode="replicate"), weight, groups=b * c)
    return out.reshape_as(x)


def train_judge(images: torch.Tensor, labels: torch.Tensor, steps: int = 600, batch_size: int = 64, lr: float = 2e-3,
                seed: int = 0, num_classes: int = 3, extra_images: torch.Tensor | None = None, blur_prob: float = 0.5,
                max_sigma: float = 1.5, progress: bool = True) -> tuple[ToyJudge, list[float]]:
    """Train a :class:`ToyJudge` on ``images`` ``(N, 3, H, W)`` in ``[-1, 1]`` with ``labels`` ``(N,)``.

    ``extra_images`` (optional, same labels): e.g. stage-1 reconstructions of ``images``, so the judge
    sees the decoder's style; half of each batch then comes from them. A random Gaussian blur is applied
    to a ``blur_prob`` share of each batch, and images are flipped left-right at random (the faces are
    symmetric up to their pose). Adam with a cosine decay. Returns ``(judge in eval mode, loss history)``.
    """
    if images.ndim != 4 or labels.shape != (len(images),):
        raise ValueError(f"need images (N, C, H, W) and labels (N,), got {tuple(images.shape)} and {tuple(labels.shape)}")
    if extra_images is not None and extra_images.shape != images.shape:
        raise ValueError(f"extra_images must match images' shape {tuple(images.shape)}, got {tuple(extra_images.shape)}")
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    judge = ToyJudge(num_classes)
    opt = torch.optim.Adam(judge.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    history = []
    judge.train()
    for _ in tqdm(range(steps), desc="training the class judge", disable=not progress):
        idx = torch.randint(len(images), (batch_size,), generator=g)
        x = images[idx]
        if extra_images is not None:
            from_extra = torch.rand(batch_size, generator=g) < 0.5
            x = torch.where(from_extra[:, None, None, None], extra_images[idx], x)
        blur = torch.rand(batch_size, generator=g) < blur_prob
        x = torch.where(blur[:, None, None, None], random_blur(x, max_sigma, g), x)
        flip = torch.rand(batch_size, generator=g) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = F.cross_entropy(judge(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(float(loss.detach()))
    return judge.eval(), history


@torch.no_grad()
def predict(judge: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted labels ``(N,)`` for images ``(N, 3, H, W)`` in ``[-1, 1]`` (the judge in eval mode)."""
    judge.eval()
    return torch.cat([judge(x).argmax(1) for x in images.split(batch_size)])


def accuracy(judge: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``images`` whose predicted label equals ``labels``."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images (and at least one), got {len(labels)} and {len(images)}")
    return float((predict(judge, images) == labels).float().mean())

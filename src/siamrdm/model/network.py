"""The Siamese RDM network: a shared pretrained body and an interleaved group-convolution head.

Both head variants (`HEADS`) interleave the channels of the two images' feature maps (a0, b0, a1, b1, ...)
and then apply a grouped convolution, so every group sees both images and the network is not a sum of two
per-image scores. They exist side by side because Jacob & Katti's paper and their released code differ:

- "paper" (the default), as the paper's text describes it: Conv2d(2C -> 32, 3x3, groups 16), ReLU,
  AdaptiveAvgPool2d(2), Linear(128 -> T).
- "pairwise", as the authors' released notebook builds it: Conv2d(2C -> C, 3x3, padding 1, groups C), so
  each group sees exactly one channel of each image, ReLU, AvgPool2d(3, stride 2),
  Linear(C * H' * W' -> T), and a ReLU on the output. Its linear layer depends on the feature map size.

Pair factorisation: the first convolution is linear, and on interleaved input it equals a grouped
convolution of image a with the even weight slices plus one of image b with the odd slices (zero padding
splits the same way). So the body and both half-convolutions run once per image; per pair only an add,
ReLU, pooling, the linear layer (and the pairwise variant's output ReLU) remain (benchmarks/bench_training.py
times the literal per-pair form against it).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import Body


@dataclass(frozen=True)
class HeadConfig:
    """One head variant: interleave, Conv2d(2C -> channels, kernel, padding, groups), ReLU, pool, Linear, [ReLU]."""

    name: str = "paper"  # as in `HEADS` and in messages
    channels: int | None = 32  # convolution outputs; None: one per feature channel (C)
    groups: int | None = 16  # None: one group per feature channel, each seeing one channel of each image
    kernel_size: int = 3
    padding: int = 0
    pool: int = 2  # AdaptiveAvgPool2d(pool): a pool x pool grid whatever the map size ...
    pool_stride: int | None = None  # ... unless set: AvgPool2d(pool, pool_stride), whose grid follows the map
    output_relu: bool = False  # a ReLU on the head's outputs
    output_bound: float | None = None  # outputs bound * tanh(pre / bound): a correction of at most +-bound

    def conv_size(self, size: int) -> int:
        """Side of the convolution's map for feature maps of this side."""
        return size + 2 * self.padding - self.kernel_size + 1

    def pooled_size(self, size: int) -> int:
        """Side of the pooled map for feature maps of this side (< 1: too small for this head)."""
        conv = self.conv_size(size)
        if self.pool_stride is None:
            return self.pool if conv >= 1 else 0
        return (conv - self.pool) // self.pool_stride + 1 if conv >= self.pool else 0

    def min_size(self) -> int:
        """The smallest feature map side this head accepts."""
        conv = 1 if self.pool_stride is None else self.pool
        return max(1, conv + self.kernel_size - 1 - 2 * self.padding)


# The head variants by name; a new variant is one entry.
HEADS: dict[str, HeadConfig] = {
    # The paper's text: Conv2d(2C -> 32, 3x3, groups 16), ReLU, AdaptiveAvgPool2d(2), Linear(128 -> T).
    "paper": HeadConfig(),
    # The authors' released notebook: Conv2d(2C -> C, 3x3, padding 1, groups C), ReLU, AvgPool2d(3, stride 2),
    # Linear(C * H' * W' -> T), ReLU.
    "pairwise": HeadConfig(name="pairwise", channels=None, groups=None, padding=1, pool=3, pool_stride=2,
                           output_relu=True),
}


def head_config(head: str | HeadConfig | None) -> HeadConfig:
    """A head variant by name (see `HEADS`), or the given config; None: "paper"."""
    if head is None:
        return HEADS["paper"]
    if isinstance(head, HeadConfig):
        return head
    if head not in HEADS:
        raise ValueError(f"unknown head '{head}' (choose from {', '.join(HEADS)})")
    return HEADS[head]


def interleave(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, C, H, W) twice -> (P, 2C, H, W) with channels a0, b0, a1, b1, ..."""
    return torch.stack((a, b), dim=2).flatten(1, 2)


class SiameseHead(nn.Module):
    """Interleaved group convolution, ReLU, average pooling, linear (and for "pairwise" a ReLU): one output per
    target. `config` is a variant's name in `HEADS` ("paper", the default, or "pairwise") or a `HeadConfig`.
    A fixed-window pool (the pairwise variant's) makes the linear layer's size depend on the feature maps, so
    that variant needs `feature_size` (height, width)."""

    def __init__(self, in_channels: int, n_outputs: int = 1, config: str | HeadConfig | None = None,
                 feature_size: tuple[int, int] | None = None):
        super().__init__()
        config = head_config(config)
        groups = config.groups or in_channels
        channels = config.channels or in_channels
        if in_channels % groups:
            raise ValueError(f"feature channels ({in_channels}) must divide into {groups} groups")
        if channels % groups:
            raise ValueError(f"convolution channels ({channels}) must divide into {groups} groups")
        self.config = config
        self.conv = nn.Conv2d(2 * in_channels, channels, config.kernel_size, stride=1, padding=config.padding,
                              groups=groups)
        if config.pool_stride is None:
            self.pool = nn.AdaptiveAvgPool2d(config.pool)
            cells = config.pool**2
        else:
            if feature_size is None:
                raise ValueError(f"the {config.name} head's linear layer needs the feature map size")
            height, width = (config.pooled_size(side) for side in feature_size)
            if min(height, width) < 1:
                raise ValueError(f"{feature_size[0]} x {feature_size[1]} feature maps are too small for the "
                                 f"{config.name} head (it needs at least {config.min_size()} x {config.min_size()})")
            self.pool = nn.AvgPool2d(config.pool, config.pool_stride)
            cells = height * width
        self.linear = nn.Linear(channels * cells, n_outputs)

    @torch.no_grad()
    def init_as_distance(self) -> None:
        """Start near a distance: image b's weights are minus image a's, so a pair's pooled activations are
        ReLU(u_a - u_b) and, averaged over both orders with equal positive linear weights, |u_a - u_b| / 2:
        a random-projection distance between the two images, which training then reshapes. The same for both
        variants (the pairwise one's output ReLU passes these non-negative outputs unchanged)."""
        self.conv.weight[:, 1::2] = -self.conv.weight[:, 0::2]
        self.conv.bias.zero_()
        self.linear.weight.fill_(1.0 / self.linear.in_features)
        self.linear.bias.zero_()

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        """The literal head on per-pair feature maps: (P, C, H, W) twice -> (P, n_outputs)."""
        x = F.relu(self.conv(interleave(features_a, features_b)))
        return self.output(self.linear(self.pool(x).flatten(1)))

    def output(self, pre: torch.Tensor) -> torch.Tensor:
        """The head's outputs from its linear layer's: the pairwise variant's output ReLU, or a bound."""
        return _output(pre, self.config.output_relu, self.config.output_bound)

    def image_terms(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's share of the first convolution when it is image a, and when it is image b: within every
        group the interleaved input channels alternate a, b, so the even weight slices see a and the odd b."""
        w, conv = self.conv.weight, self.conv
        as_a = F.conv2d(features, w[:, 0::2], padding=conv.padding, groups=conv.groups)
        as_b = F.conv2d(features, w[:, 1::2], padding=conv.padding, groups=conv.groups)
        return as_a, as_b

    def pair_outputs(self, as_a: torch.Tensor, as_b: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Outputs for ordered pairs (i[p], j[p]) from image terms: (P, n_outputs)."""
        x = F.relu(as_a[i] + as_b[j] + self.conv.bias.view(1, -1, 1, 1))
        return self.output(self.linear(self.pool(x).flatten(1)))


class SiameseRDMNet(nn.Module):
    """Predicts the dissimilarity of two images; symmetric by averaging both orders."""

    def __init__(self, body: Body, n_outputs: int = 1, image_size: int = 224, head: str | HeadConfig = "paper",
                 distance_init: bool = True):
        """`head`: the variant, "paper" (the paper's text) or "pairwise" (the authors' released code), see `HEADS`;
        or a `HeadConfig`."""
        super().__init__()
        self.body = body
        self.image_size = image_size
        channels, height, width = body.output_shape(image_size)
        config = head_config(head)
        if min(height, width) < config.min_size():
            raise ValueError(
                f"stage {body.stage} gives {height} x {width} maps at {image_size} px; the {config.name} head needs "
                f"at least {config.min_size()} x {config.min_size()}: use larger images or an earlier stage"
            )
        self.feature_shape = (channels, height, width)
        self.head = SiameseHead(channels, n_outputs, config, (height, width))
        if distance_init:
            self.head.init_as_distance()
        # Per-channel standardisation of body features, set from training images by `set_feature_stats`.
        self.register_buffer("feature_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("feature_std", torch.ones(1, channels, 1, 1))

    def train(self, mode: bool = True) -> SiameseRDMNet:
        """The head follows `mode`; the body always stays in eval mode, so its BatchNorm keeps ImageNet's
        statistics whether it is frozen or trained (a caller's `model.train()` must not change them)."""
        super().train(mode)
        self.body.eval()
        return self

    @torch.no_grad()
    def set_feature_stats(self, features: torch.Tensor) -> None:
        """Standardise each channel with the statistics of these (raw) training-image features."""
        self.feature_mean.copy_(features.mean(dim=(0, 2, 3), keepdim=True))
        self.feature_std.copy_(features.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))

    def standardise(self, raw_features: torch.Tensor) -> torch.Tensor:
        return (raw_features - self.feature_mean) / self.feature_std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Standardised body features of (B, 3, S, S) images in [0, 1]."""
        return self.standardise(self.body(images))

    def pair_predictions(
        self, features: torch.Tensor, i: torch.Tensor, j: torch.Tensor, both_orders: bool = False
    ) -> torch.Tensor:
        """Factorised head on pairs of images given their features: (P, n_outputs), or (2, P, n_outputs)."""
        as_a, as_b = self.head.image_terms(features)
        forward = self.head.pair_outputs(as_a, as_b, i, j)
        backward = self.head.pair_outputs(as_a, as_b, j, i)
        both = torch.stack((forward, backward))
        return both if both_orders else both.mean(dim=0)

    def forward(self, images: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Symmetric predictions for pairs (i[p], j[p]) of a batch of images: body once per image."""
        return self.pair_predictions(self.features(images), i, j)

    def body_parameters(self) -> list[nn.Parameter]:
        return list(self.body.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def freeze_body(self, frozen: bool = True, stages: int | str = "all") -> None:
        """Frozen: no body weight trains. Unfrozen: the top `stages` stages train (`Body.trained_stages`; 'all':
        the whole body), the stages below them stay frozen."""
        trained = set() if frozen else {id(p) for p in self.body.trained_parameters(stages)}
        for p in self.body.parameters():
            p.requires_grad_(id(p) in trained)


def all_pairs(n: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j) of every unordered pair i < j of n images, in upper-triangle order."""
    i, j = torch.triu_indices(n, n, offset=1, device=device)
    return i, j


# --------------------------------------------------------------------------- all pairs, tiled
# The training loss over every ordered pair (i != j) of N images without building per-pair tensors: the
# image terms of the split convolution are added tile by tile (blocks of images x images, broadcast, no
# gathers), and pooling + linear fold into one weight on the conv map. One pass over the tiles computes the
# loss and every gradient, so memory is O(N) plus a tile, and the result is exactly F.mse_loss over both
# orders of all pairs (as `pair_predictions(..., both_orders=True)` gives), not an approximation.


def pooled_linear_weight(head: SiameseHead, height: int, width: int) -> torch.Tensor:
    """The head's pooling then its linear layer, as one (T, channels * height * width) weight on the conv map.

    Both variants' pools (adaptive or fixed-window average) are linear, so running the head's own pool on a
    one-hot map per position gives that position's share in every pooled cell."""
    weight = head.linear.weight
    channels = head.conv.out_channels
    eye = torch.eye(height * width, device=weight.device, dtype=weight.dtype).view(-1, 1, height, width)
    share = head.pool(eye).reshape(height * width, -1)  # each map position's weight in each pooled cell
    cells = share.shape[1]
    if channels * cells != weight.shape[1]:
        raise ValueError(f"a {height} x {width} conv map pools to {cells} cells per channel; the {head.config.name} "
                         f"head's linear layer takes {weight.shape[1] // channels}")
    per_cell = weight.view(weight.shape[0], channels, cells)
    return torch.einsum("tck,sk->tcs", per_cell, share).reshape(weight.shape[0], -1)


def default_tile(dim: int, device: torch.device) -> int:
    """Images per tile side: about 8 MB of pair activations on CPU (measured best on a 32 MB L3), 128 MB on GPU."""
    budget = 2**25 if device.type == "cuda" else 2**21
    return max(8, int((budget / dim) ** 0.5))


class _Sums:
    """One worker's running sums over pairs: the squared error and the gradients' accumulators."""

    def __init__(self, a: torch.Tensor, weight: torch.Tensor, tile: int):
        dim, outputs = a.shape[1], weight.shape[0]
        self.loss = torch.zeros(outputs, dtype=torch.float64, device=a.device)  # squared errors per output
        self.grad_a = torch.zeros_like(a)  # for one output: sum_j g_ij [z_ijd > 0]; the weight is applied last
        self.grad_b = torch.zeros_like(a)
        self.grad_weight = torch.zeros_like(weight)
        self.grad_bias = torch.zeros(outputs, dtype=torch.float64, device=a.device)
        self.z = torch.empty(tile * tile * dim, dtype=a.dtype, device=a.device)
        self.grad_z = None if outputs == 1 else torch.empty_like(self.z)
        self.ones = torch.ones(tile, dtype=a.dtype, device=a.device)

    def add(self, other: _Sums) -> None:
        for name in ("loss", "grad_a", "grad_b", "grad_weight", "grad_bias"):
            getattr(self, name).add_(getattr(other, name))


def _output(pre: torch.Tensor, relu: bool, bound: float | None) -> torch.Tensor:
    """The head's output nonlinearity, in place where it can be: none, a ReLU, or bound * tanh(pre / bound)."""
    if relu:
        return pre.relu_() if not pre.requires_grad else F.relu(pre)
    if bound is not None:
        return torch.tanh(pre / bound) * bound
    return pre


def _pair_tile(s: _Sums, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
               scale: float | torch.Tensor, output_relu: bool, output_bound: float | None, rows: slice, cols: slice,
               targets: torch.Tensor, diagonal: int | None) -> None:
    """Loss and gradient sums of the ordered pairs (i in rows, j in cols): image i as a, image j as b.
    `diagonal` is where the pairs of an image with itself lie in the tile (the offset rows.start - cols.start of
    torch.diagonal), None when the tile holds none."""
    dim, outputs = a.shape[1], weight.shape[0]
    ni, nj = rows.stop - rows.start, cols.stop - cols.start
    z = s.z[: ni * nj * dim].view(ni, nj, dim)
    torch.add(a[rows, None, :], b[None, cols, :], out=z)
    z.relu_()
    out = torch.mm(z.view(-1, dim), weight.t()).view(ni, nj, outputs).add_(bias)
    if output_relu:  # prediction = relu(pre); its gradient is masked where pre <= 0, below
        out.relu_()
        diff = out - targets
    elif output_bound is not None:  # prediction = bound * tanh(pre / bound); its derivative 1 - (out / bound)^2
        out = torch.tanh(out.div_(output_bound)).mul_(output_bound)
        diff = out - targets
    else:
        diff = out.sub_(targets)
    if diagonal is not None:
        diff.diagonal(diagonal, 0, 1).zero_()  # a pair of an image with itself is not a pair
    s.loss += torch.sum(diff * diff, dim=(0, 1), dtype=torch.float64)
    g = diff.mul_(scale)  # a number, or one per output (weighted outputs)
    if output_relu:  # the output ReLU's backward (out = relu(pre) > 0 exactly where pre > 0), in place
        torch.ops.aten.threshold_backward.grad_input(g, out, 0, grad_input=g)
    elif output_bound is not None:
        g.mul_(1 - (out / output_bound) ** 2)
    s.grad_bias += g.sum((0, 1), dtype=torch.float64)
    if outputs == 1:
        grad_z = g.expand(ni, nj, dim)  # the weight is factored out: grad_a = weight * sum_j g_ij [z_ijd > 0]
    else:
        s.grad_weight.addmm_(g.view(-1, outputs).t(), z.view(-1, dim))
        grad_z = s.grad_z[: ni * nj * dim].view(ni, nj, dim)
        torch.mm(g.view(-1, outputs), weight, out=grad_z.view(-1, dim))
    torch.ops.aten.threshold_backward.grad_input(grad_z, z, 0, grad_input=z)  # ReLU's backward, in place
    s.grad_a[rows] += z.sum(1)
    s.grad_b[cols] += torch.mv(z.view(ni, nj * dim).t(), s.ones[:ni]).view(nj, dim)


class _AllPairsMSE(torch.autograd.Function):
    """Mean squared error of the head over all ordered pairs, from the per-image terms (see `all_pairs_loss`)."""

    @staticmethod
    def forward(ctx, a, b, weight, bias, targets, tile: int, workers: int, output_relu: bool,
                output_bound: float | None, row_block: tuple[int, int] | None = None,
                output_weights: torch.Tensor | None = None):
        n = a.shape[0]
        outputs = weight.shape[0]
        count = n * (n - 1) * outputs
        scale = 2.0 / count if output_weights is None else output_weights.to(a.dtype) * (2.0 / count)
        index = torch.arange(n, device=a.device)
        base = index * (2 * n - index - 1) // 2 - index - 1  # pair (i < j) sits at base[i] + j in upper-triangle order
        if row_block is None:  # every ordered pair: tiles on and above the diagonal, each with its mirror
            jobs = [(i0, j0, min(n, i0 + tile)) for i0 in range(0, n, tile) for j0 in range(i0, n, tile)]
        else:  # the ordered pairs whose image a is in the block, against every image b: each tile once
            start, stop = row_block
            jobs = [(i0, j0, min(stop, i0 + tile)) for i0 in range(start, stop, tile) for j0 in range(0, n, tile)]

        def work(share: list[tuple[int, int, int]]) -> _Sums:
            s = _Sums(a, weight, tile)
            with torch.no_grad():  # grad mode is per thread; worker threads start with it on
                for i0, j0, i1 in share:
                    rows, cols = slice(i0, i1), slice(j0, min(n, j0 + tile))
                    args = (s, a, b, weight, bias, scale, output_relu, output_bound)
                    if row_block is not None or rows == cols:  # any tile: targets looked up by (min, max)
                        i, j = index[rows, None], index[None, cols]
                        y = targets[(base[torch.minimum(i, j)] + torch.maximum(i, j)).clamp_min_(0)]
                        _pair_tile(*args, rows, cols, y, diagonal=i0 - j0 if i0 < cols.stop and j0 < i1 else None)
                    else:  # the tile above the diagonal and its mirror share one block of targets
                        y = targets[base[rows, None] + index[None, cols]]
                        _pair_tile(*args, rows, cols, y, diagonal=None)
                        _pair_tile(*args, cols, rows, y.transpose(0, 1), diagonal=None)
            return s

        if workers <= 1:
            total = work(jobs)
        else:  # threads of one-thread ops: no OpenMP barrier per op, which stalls badly on busy cores.
            # A fixed share of tiles per worker, summed in a fixed order: the same result every run. Each worker
            # thread sets its own OpenMP thread count (a per-thread setting), never the caller's.
            def single_threaded(share: list[tuple[int, int]]) -> _Sums:
                torch.set_num_threads(1)
                return work(share)

            with ThreadPoolExecutor(workers) as pool:
                parts = [f.result() for f in [pool.submit(single_threaded, jobs[k::workers]) for k in range(workers)]]
            total = parts[0]
            for part in parts[1:]:
                total.add(part)
        grad_a, grad_b, grad_weight = total.grad_a, total.grad_b, total.grad_weight
        if outputs == 1:  # sum_ij g_ij relu(z_ij) = sum_i a_i * grad_a_i + sum_j b_j * grad_b_j, so no pass for it
            grad_weight = ((a * grad_a).sum(0) + (b * grad_b).sum(0)).unsqueeze(0)
            grad_a.mul_(weight[0])
            grad_b.mul_(weight[0])
        ctx.save_for_backward(grad_a, grad_b, grad_weight, total.grad_bias.to(bias.dtype))
        squared = total.loss if output_weights is None else total.loss * output_weights.to(torch.float64)
        return (squared.sum() / count).to(a.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        grad_a, grad_b, grad_weight, grad_bias = ctx.saved_tensors
        return (grad_a * grad_loss, grad_b * grad_loss, grad_weight * grad_loss, grad_bias * grad_loss,
                None, None, None, None, None, None, None)


def all_pairs_loss(head: SiameseHead, features: torch.Tensor, targets: torch.Tensor, tile: int | None = None,
                   workers: int | None = None, rows: tuple[int, int] | None = None,
                   output_weights: torch.Tensor | None = None) -> torch.Tensor:
    """F.mse_loss of both orders of every pair i < j of N images against `targets` (P, T), in O(N) memory.
    Either head variant; the pairwise one's output ReLU is applied (and differentiated) tile by tile.

    `features` are standardised body features (N, C, H, W); the gradient reaches them, and through them the
    body, via one backward pass of the split convolution. `workers` (default: torch's thread count on CPU,
    1 on GPU) run tiles in parallel threads.

    `rows=(start, stop)` keeps only the ordered pairs (i, j) whose image i (the head's image a) is in
    start..stop-1, against every j != i, still divided by the count of all ordered pairs: the losses (and
    gradients) of row blocks that split the N images add up to the full loss. Each rank of a distributed step
    computes its block against the features of all ranks (siamrdm.train.distributed).

    `output_weights` (T,) weigh each output's squared errors (default: all 1, the plain mean).
    """
    as_a, as_b = head.image_terms(features)
    n, _, height, width = as_a.shape
    if n < 2 or targets.shape[0] != n * (n - 1) // 2:
        raise ValueError(f"{targets.shape[0]} targets for {n * (n - 1) // 2} pairs of {n} images")
    a = (as_a + head.conv.bias.view(1, -1, 1, 1)).reshape(n, -1)
    b = as_b.reshape(n, -1)
    weight = pooled_linear_weight(head, height, width)
    tile = tile or default_tile(a.shape[1], a.device)
    if workers is None:
        workers = 1 if a.device.type == "cuda" else torch.get_num_threads()
    targets = targets.to(device=a.device, dtype=a.dtype).reshape(len(targets), -1)
    if rows is not None:
        rows = (int(rows[0]), int(rows[1]))
        if not 0 <= rows[0] <= rows[1] <= n:
            raise ValueError(f"row block {rows} is not within the {n} images")
    return _AllPairsMSE.apply(a, b, weight, head.linear.bias, targets, tile, workers, head.config.output_relu,
                              head.config.output_bound, rows, output_weights)


def all_pairs_correlation_loss(head: SiameseHead, features: torch.Tensor, targets: torch.Tensor,
                               offsets: torch.Tensor | None = None, tile: int | None = None,
                               workers: int | None = None) -> torch.Tensor:
    """1 - Pearson r between predicted and target dissimilarities over both orders of every pair, averaged over
    the outputs: a loss that, like the challenge's Spearman metric, ignores the predictions' scale and offset.

    The prediction of a pair is the head's output plus `offsets` (P, T) (a prior's pair values; the head then
    learns its correction), and the target is `targets + offsets`, so `targets` are the residuals that the MSE
    loss would fit. A first pass without a graph gives r's statistics (it holds the N x N outputs, so this loss
    is for sets that fit whole, not for the mini-batch path). The tiled squared-error pass then runs with
    per-output weights and shifted targets, built from those statistics so that its gradient is exactly the
    gradient of 1 - r (whose formula already includes how the means and variances move with the outputs).
    The returned value is 1 - r; its gradient is the tiled pass's.
    """
    n = features.shape[0]
    out = all_pairs_outputs(head, features, tile).double()  # (N, N, T), [i, j]: image i as a
    i, j = all_pairs(n, out.device)
    heads = torch.cat([out[i, j], out[j, i]])  # both orders of every pair i < j, as the MSE loss sees them
    y = targets.to(device=out.device, dtype=torch.float64).reshape(len(targets), -1)
    shift = torch.zeros_like(y) if offsets is None else offsets.to(y).reshape(y.shape)
    q = heads + torch.cat([shift, shift])
    full = y + shift
    q_centred, y_centred = q - q.mean(0), torch.cat([full, full]) - full.mean(0)
    s_qq = (q_centred**2).sum(0).clamp_min(1e-30)
    s_yy = (y_centred**2).sum(0).clamp_min(1e-30)
    r = (q_centred * y_centred).sum(0) / torch.sqrt(s_qq * s_yy)
    r_safe = torch.where(r >= 0, r.clamp_min(1e-3), r.clamp_max(-1e-3))  # the shift below divides by r
    # d(1 - r)/dq = (r / s_qq)(q - mean q) - (y - mean y) / sqrt(s_qq s_yy); the tiled pass's gradient is
    # (2 w / count)(head - shifted) with count = 2P * T: so w = r * 2P / (2 s_qq) and the shifted target below.
    weights = r_safe * len(q) / (2 * s_qq)
    shifted = q.mean(0) - shift + (full - full.mean(0)) * torch.sqrt(s_qq / s_yy) / r_safe
    surrogate = all_pairs_loss(head, features, shifted.to(features.dtype), tile, workers,
                               output_weights=weights.to(features.dtype))
    value = (1 - r).mean().to(surrogate.dtype)
    return surrogate - surrogate.detach() + value


@torch.no_grad()
def all_pairs_outputs(head: SiameseHead, features: torch.Tensor, tile: int | None = None) -> torch.Tensor:
    """Head outputs for every ordered pair of N images, (N, N, T): entry [i, j] has image i as a and j as b.

    Tiled like `all_pairs_loss`: no per-pair gathers and no pair tensor larger than a tile, which makes
    predicting and validating several times faster than gathering chunks of pairs on CPU.
    """
    as_a, as_b = head.image_terms(features)
    n, _, height, width = as_a.shape
    a = (as_a + head.conv.bias.view(1, -1, 1, 1)).reshape(n, -1)
    b = as_b.reshape(n, -1)
    weight = pooled_linear_weight(head, height, width)
    tile = tile or default_tile(a.shape[1], a.device)
    out = torch.empty(n, n, weight.shape[0], dtype=a.dtype, device=a.device)
    for i0 in range(0, n, tile):
        for j0 in range(0, n, tile):
            z = (a[i0 : i0 + tile, None, :] + b[None, j0 : j0 + tile, :]).relu_()
            block = (z @ weight.t()).add_(head.linear.bias)
            out[i0 : i0 + tile, j0 : j0 + tile] = _output(block, head.config.output_relu, head.config.output_bound)
    return out

"""Deep ensemble surrogate (Lakshminarayanan, Pritzel & Blundell, NeurIPS 2017).

Each member is a small MLP that predicts a mean and a variance and is trained by
Gaussian negative log likelihood (after a squared-error warm-up of the mean) from its
own random initialization. The
prediction is the uniform mixture of the members' Gaussians. All members train
together as one batched network, so a fit is a single full-batch Adam loop.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch
from botorch.models.ensemble import EnsembleModel
from torch import Tensor

from matforge.engine.models.base import Surrogate
from matforge.engine.models.gp import DTYPE, as_tensor
from matforge.engine.models.metrics import check_training_data
from matforge.engine.settings import get_settings

VARIANCE_FLOOR = 1e-6
"""Smallest member variance, in units of the standardized target's variance."""

TRAIN_DTYPE = torch.float32
"""Training runs in single precision (about 2.5x faster); the fitted net is then cast to
double, which BoTorch acquisition functions use."""


@contextlib.contextmanager
def _torch_threads():
    """At most the process's share of torch threads (``MATFORGE_THREADS``, else cores // workers).

    The ``matforge`` command already sets it process-wide; this keeps the members' small
    matrices from oversubscribing the CPUs where the engine runs without it (a deployment
    or a script), since torch defaults to a thread per core.
    """
    n = get_settings().threads_per_process()
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(n, before)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class BatchedMLP(torch.nn.Module):
    """``n_members`` independent MLPs evaluated as one batched network.

    Maps standardized inputs ``N x d`` to ``n_members x N x 2`` (mean and raw
    variance) with SiLU hidden layers; weights are initialized as ``nn.Linear``.
    """

    def __init__(
        self,
        n_members: int,
        n_features: int,
        hidden: Sequence[int],
        generator: torch.Generator,
        dtype: torch.dtype = DTYPE,
    ):
        super().__init__()
        sizes = [n_features, *hidden, 2]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(n_in)
            w = (torch.rand(n_members, n_in, n_out, generator=generator, dtype=dtype) * 2 - 1)
            b = (torch.rand(n_members, 1, n_out, generator=generator, dtype=dtype) * 2 - 1)
            self.weights.append(torch.nn.Parameter(w * bound))
            self.biases.append(torch.nn.Parameter(b * bound))

    def forward(self, X: Tensor) -> Tensor:
        h = X.unsqueeze(0).expand(len(self.weights[0]), *X.shape)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = torch.nn.functional.silu(h)
        return h


class DeepEnsembleModel(EnsembleModel):
    """BoTorch view of a fitted deep ensemble: one posterior sample per member.

    ``forward`` maps ``batch x q x d`` inputs in original units to the members'
    means, ``batch x n_members x q x 1``, in original units. The posterior is
    therefore the epistemic part of the ensemble (spread of member means), as a
    GP posterior is the latent function without observation noise; the members'
    own variances enter ``DeepEnsembleSurrogate.predict`` only.
    """

    def __init__(self, net: BatchedMLP, x_mean: Tensor, x_scale: Tensor, y_mean, y_scale):
        super().__init__()
        self.net = net
        self.register_buffer("x_mean", x_mean)
        self.register_buffer("x_scale", x_scale)
        self.y_mean = float(y_mean)
        self.y_scale = float(y_scale)
        self._num_outputs = 1

    def member_outputs(self, X: Tensor) -> tuple[Tensor, Tensor]:
        """Member means and variances in original units.

        X : ``batch x q x d``; returns two ``batch x n_members x q`` tensors.
        """
        batch_shape, q, d = X.shape[:-2], X.shape[-2], X.shape[-1]
        Z = ((X.to(DTYPE) - self.x_mean) / self.x_scale).reshape(-1, d)
        out = self.net(Z)  # n_members x (batch * q) x 2
        mean = out[..., 0] * self.y_scale + self.y_mean
        var = (torch.nn.functional.softplus(out[..., 1]) + VARIANCE_FLOOR) * self.y_scale**2
        n_members = out.shape[0]
        shape = (n_members, *batch_shape, q)
        mean, var = mean.reshape(shape), var.reshape(shape)
        # members last-but-one-batch: batch x n_members x q
        return mean.movedim(0, -2), var.movedim(0, -2)

    def forward(self, X: Tensor) -> Tensor:
        mean, _ = self.member_outputs(X)
        return mean.unsqueeze(-1)


class DeepEnsembleSurrogate(Surrogate):
    """Ensemble of mean-variance MLPs trained by Gaussian NLL.

    Inputs and outputs are standardized internally; predictions come back in the
    units of ``y``. The predictive distribution is the uniform mixture of the
    members' Gaussians: its variance is the mean of the member variances
    (aleatoric) plus the variance of the member means (epistemic).

    Parameters
    ----------
    n_members : number of independently initialized networks (at least 5)
    hidden : widths of the hidden layers
    epochs : full-batch Adam steps
    lr : initial Adam learning rate, annealed to zero on a cosine schedule
    weight_decay : decoupled weight decay (AdamW), which keeps small-data fits smooth
    warmup_fraction : share of the epochs that fit the means alone by squared error
        before the Gaussian NLL trains means and variances together; without it the
        variance head explains early misfit as noise and the means stay underfitted
    random_state : seed for initialization; the same seed gives the same fit
    """

    def __init__(
        self,
        n_members: int = 5,
        hidden: Sequence[int] = (64, 64),
        epochs: int = 300,
        lr: float = 1e-2,
        weight_decay: float = 1e-2,
        warmup_fraction: float = 0.5,
        random_state: int | None = None,
    ):
        self.n_members = n_members
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_fraction = warmup_fraction
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray, bounds=None) -> DeepEnsembleSurrogate:
        """Fit to X : array of shape (n_samples, n_features), y : shape (n_samples,)."""
        X, y = check_training_data(X, y, min_rows=2)
        if self.n_members < 5:
            raise ValueError(f"a deep ensemble needs n_members >= 5, got {self.n_members}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        x_mean, x_scale = X.mean(axis=0), X.std(axis=0)
        x_scale[x_scale == 0] = 1.0
        y_mean, y_scale = y.mean(), y.std()
        if y_scale == 0:
            y_scale = 1.0
        seed = (
            self.random_state
            if self.random_state is not None
            else int(np.random.SeedSequence().generate_state(1)[0])
        )
        generator = torch.Generator().manual_seed(seed)
        net = BatchedMLP(self.n_members, X.shape[1], self.hidden, generator, TRAIN_DTYPE)
        Z = torch.as_tensor((X - x_mean) / x_scale, dtype=TRAIN_DTYPE)
        t = torch.as_tensor((y - y_mean) / y_scale, dtype=TRAIN_DTYPE)
        optimizer = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        n_warmup = int(self.warmup_fraction * self.epochs)
        with _torch_threads():
            for epoch in range(self.epochs):
                optimizer.zero_grad()
                out = net(Z)
                if epoch < n_warmup:
                    loss = (t - out[..., 0]) ** 2
                else:
                    var = torch.nn.functional.softplus(out[..., 1]) + VARIANCE_FLOOR
                    loss = 0.5 * (torch.log(var) + (t - out[..., 0]) ** 2 / var)
                # summed over members, so each member follows the gradient of its own loss
                loss.mean(dim=-1).sum().backward()
                optimizer.step()
                schedule.step()
        net = net.to(DTYPE).requires_grad_(False)
        model = DeepEnsembleModel(net, as_tensor(x_mean), as_tensor(x_scale), y_mean, y_scale)
        model.eval()
        self.model_ = model
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: np.ndarray, return_std: bool = False, observation_noise: bool = False):
        """Mixture mean (and standard deviation) at X : array of shape (n, n_features).

        Returns arrays of shape (n,).
        """
        X = np.asarray(X, dtype=float)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X must have shape (n, {self.n_features_in_}), got {X.shape}"
            )
        with torch.no_grad(), _torch_threads():
            means, variances = self.model_.member_outputs(as_tensor(X))
        means, variances = means.numpy(), variances.numpy()  # n_members x n
        mean = means.mean(axis=0)
        if not return_std:
            return mean
        total = variances.mean(axis=0) + means.var(axis=0)
        return mean, np.sqrt(total)

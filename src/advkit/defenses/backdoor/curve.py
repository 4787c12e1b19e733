"""A quadratic Bezier curve between two networks of one architecture, for any ``nn.Module``.

Garipov, Izmailov, Podoprikhin, Vetrov & Wilson, "Loss Surfaces, Mode Connectivity, and
Fast Ensembling of DNNs", NeurIPS 2018: the weights on the curve are

    theta(t) = (1 - t)^2 * theta_start + 2 t (1 - t) * theta_bend + t^2 * theta_end,

with the two ends fixed and only the bend trained, on a fresh ``t ~ U(0, 1)`` per batch,
so that every point of the curve has a low loss. The paper (and IBM's model-sanitization
code of Zhao et al., ICLR 2020) builds curve versions of each layer type; here the point
is a set of interpolated parameter tensors fed to the unchanged network through
:func:`torch.func.functional_call`, so any eager network works, layers advkit never saw
included. Buffers (BatchNorm running statistics) are not interpolated: like the
reference code, :func:`recompute_batchnorm` re-estimates them on clean data at each
evaluated ``t`` (a cumulative average over one pass, the reference's ``update_bn``).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _NormBase

from advkit.errors import AdvkitError


def bezier_coefficients(t: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The weights of the start, bend and end of a quadratic Bezier curve at ``t``."""
    t = torch.as_tensor(t, dtype=torch.float32)
    return (1 - t) ** 2, 2 * t * (1 - t), t**2


class BezierCurve(nn.Module):
    """The curve between ``start`` and ``end`` (same architecture); only the bend is a parameter.

    The bend starts at the midpoint of the two ends (the reference code's linear
    initialisation). ``template`` is a private copy of ``start`` whose buffers (BatchNorm
    statistics) the curve's forward passes use and update.
    """

    def __init__(self, start: nn.Module, end: nn.Module) -> None:
        super().__init__()
        start_params = dict(start.named_parameters())
        end_params = dict(end.named_parameters())
        if list(start_params) != list(end_params) or any(start_params[k].shape != end_params[k].shape for k in start_params):
            raise AdvkitError("a mode-connectivity curve needs two networks of the same architecture")
        self.template = copy.deepcopy(start)
        for param in self.template.parameters():
            param.requires_grad_(False)
        self.names = list(start_params)
        for index, name in enumerate(self.names):
            self.register_buffer(f"start_{index}", start_params[name].detach().clone())
            self.register_buffer(f"end_{index}", end_params[name].detach().clone())
        self.bend = nn.ParameterList(
            nn.Parameter(0.5 * (start_params[name].detach() + end_params[name].detach())) for name in self.names
        )

    def ends(self, index: int) -> tuple[Tensor, Tensor]:
        return getattr(self, f"start_{index}"), getattr(self, f"end_{index}")

    def point(self, t: float | Tensor) -> dict[str, Tensor]:
        """The network's parameters at ``t`` (differentiable in the bend)."""
        a, b, c = (w.to(self.bend[0].device) for w in bezier_coefficients(t))
        out = {}
        for index, name in enumerate(self.names):
            start, end = self.ends(index)
            out[name] = a * start + b * self.bend[index] + c * end
        return out

    def forward(self, x: Tensor, t: float | Tensor) -> Tensor:
        """Logits of the network at ``t`` (the template's train/eval mode decides BatchNorm's)."""
        return functional_call(self.template, self.point(t), (x,))

    def materialise(self, t: float) -> nn.Module:
        """An independent copy of the network with the weights at ``t`` (buffers: the template's)."""
        network = copy.deepcopy(self.template)
        with torch.no_grad():
            weights = self.point(t)
            for name, param in network.named_parameters():
                param.copy_(weights[name])
                param.requires_grad_(True)
        return network.eval()


def has_batchnorm(network: nn.Module) -> bool:
    """Whether a module keeps running statistics (BatchNorm, or InstanceNorm that tracks them)."""
    return any(isinstance(m, _NormBase) and m.track_running_stats for m in network.modules())


@torch.no_grad()
def recompute_batchnorm(network: nn.Module, x: Tensor, batch_size: int = 256) -> None:
    """Re-estimate every running statistic on ``x``: reset, one pass in train mode where
    each batch weighs by its rows (the reference's ``update_bn``), then back to eval mode."""
    norms = [m for m in network.modules() if isinstance(m, _NormBase) and m.track_running_stats]
    if not norms:
        network.eval()
        return
    momenta = [m.momentum for m in norms]
    device = next((p.device for p in network.parameters()), torch.device("cpu"))
    for module in norms:
        module.reset_running_stats()
    network.train()
    try:
        for first in range(0, x.shape[0], batch_size):
            batch = x[first : first + batch_size]
            for module in norms:
                module.momentum = batch.shape[0] / (first + batch.shape[0])  # the mean over all rows so far
            network(batch.to(device))
    finally:
        for module, momentum in zip(norms, momenta):
            module.momentum = momentum
        network.eval()

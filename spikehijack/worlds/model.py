"""The encoder f_theta of the synthetic world: a three-layer feed-forward net with l2-normalised output.

``Encoder(in_dim=16, hidden=64, out_dim=16, seed=0)`` maps x [..., in_dim] -> [..., out_dim] (unit norm);
it is applied to query tokens and document patches alike.

``StackedEncoder(seeds, ...)`` holds R independent encoders as batched weights [R, in, out] and maps
x [R, ..., in] -> [R, ..., out] with ``torch.baddbmm``: R training runs advance in one step. Runs never
mix: the loss is a sum over runs, so each run's gradient is its own, and Adam is elementwise. Run r of a
stack is initialised exactly like ``Encoder(seed=seeds[r])``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.checks import check_positive_int


def _init_layer(fan_in: int, fan_out: int, seed: int, layer: int) -> tuple[Tensor, Tensor]:
    """nn.Linear's default init (uniform +-1/sqrt(fan_in)) from a generator seeded by (seed, layer)."""
    g = torch.Generator().manual_seed(int(seed) * 7_919 + 101 * layer + 17)
    bound = 1.0 / math.sqrt(fan_in)
    w = (torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * bound
    b = (torch.rand(fan_out, generator=g) * 2 - 1) * bound
    return w, b


class StackedEncoder(nn.Module):
    """R independent 3-layer MLPs (ReLU) with l2-normalised output: x [R, ..., in] -> [R, ..., out]."""

    def __init__(
        self, seeds: Sequence[int], in_dim: int = 16, hidden: int = 64, out_dim: int = 16, n_layers: int = 3
    ) -> None:
        super().__init__()
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("seeds must name at least one run")
        for name, v in (("in_dim", in_dim), ("hidden", hidden), ("out_dim", out_dim), ("n_layers", n_layers)):
            check_positive_int(name, v)
        self.seeds, self.in_dim, self.hidden, self.out_dim = seeds, in_dim, hidden, out_dim
        dims = [in_dim] + [hidden] * (n_layers - 1) + [out_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            ws, bs = zip(*(_init_layer(a, b, s, layer) for s in seeds), strict=True)
            self.weights.append(nn.Parameter(torch.stack(ws)))  # [R, a, b]
            self.biases.append(nn.Parameter(torch.stack(bs)[:, None, :]))  # [R, 1, b]

    @property
    def n_runs(self) -> int:
        return len(self.seeds)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or x.shape[0] != self.n_runs or x.shape[-1] != self.in_dim:
            raise ValueError(f"x must have shape [R={self.n_runs}, ..., {self.in_dim}], got {tuple(x.shape)}")
        shape = x.shape
        h = x.reshape(shape[0], -1, shape[-1])
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = torch.relu(h)
        return F.normalize(h, dim=-1).reshape(*shape[:-1], self.out_dim)

    def state_arrays(self) -> dict[str, Tensor]:
        """Plain tensors for ``io.write_npz`` (w0, b0, w1, ...), each [R, ...]."""
        out = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            out[f"w{i}"], out[f"b{i}"] = w.detach().cpu(), b.detach().cpu()
        return out

    def load_arrays(self, arrays: dict[str, object]) -> StackedEncoder:
        """Inverse of ``state_arrays`` (numpy or torch arrays)."""
        with torch.no_grad():
            for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
                w.copy_(torch.as_tensor(arrays[f"w{i}"]))
                b.copy_(torch.as_tensor(arrays[f"b{i}"]))
        return self

    def select(self, runs: Sequence[int]) -> StackedEncoder:
        """A new stack holding copies of the given run indices."""
        sub = StackedEncoder([self.seeds[r] for r in runs], self.in_dim, self.hidden, self.out_dim, len(self.weights))
        idx = torch.as_tensor(list(runs), dtype=torch.long)
        return sub.load_arrays({k: v[idx] for k, v in self.state_arrays().items()}).to(self.weights[0].device)


class Encoder(nn.Module):
    """One encoder: x [..., in_dim] -> unit vectors [..., out_dim]. Same init as run 0 of StackedEncoder([seed])."""

    def __init__(self, in_dim: int = 16, hidden: int = 64, out_dim: int = 16, seed: int = 0, n_layers: int = 3):
        super().__init__()
        self.stack = StackedEncoder([seed], in_dim, hidden, out_dim, n_layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.stack(x.unsqueeze(0)).squeeze(0)

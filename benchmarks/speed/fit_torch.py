"""The same model in PyTorch, as fast as it can fairly be written: `python fit_torch.py eager|compile`.

The full-covariance posterior's lower-triangular scale is one matmul of the flat
parameters against a fixed 0/1 matrix [K(K+1)/2, K*K] (index assignment into a
zero tensor is slower), on two threads, with Adam's multi-tensor (`foreach`)
update.
"""

import math
import sys
import time

import torch

from common import BATCH, D, EPOCHS, HIDDEN, K, ROWS, report, throughput, training_rows

torch.manual_seed(0)
torch.set_num_threads(2)
x = training_rows()
TRIL = K * (K + 1) // 2


def tril_placement() -> torch.Tensor:
    """[TRIL, K*K]: row i puts flat parameter i at its place in the row-major K x K matrix."""
    rows, cols = torch.tril_indices(K, K)
    placement = torch.zeros(TRIL, K * K)
    placement[torch.arange(TRIL), rows * K + cols] = 1.0
    return placement


class VAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        act = torch.nn.LeakyReLU(0.2)
        self.encoder = torch.nn.Sequential(torch.nn.Linear(D, HIDDEN), act, torch.nn.Linear(HIDDEN, HIDDEN), act,
                                           torch.nn.Linear(HIDDEN, K + TRIL))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(K, HIDDEN), act, torch.nn.Linear(HIDDEN, HIDDEN), act,
                                           torch.nn.Linear(HIDDEN, 2 * D))
        self.register_buffer("placement", tril_placement())
        self.register_buffer("diagonal", torch.eye(K, dtype=torch.bool))
        self.register_buffer("mean", torch.tensor(x.mean(0)))
        self.register_buffer("scale", torch.tensor(x.std(0)))

    def forward(self, batch):
        u = (batch - self.mean) / self.scale
        params = self.encoder(u)
        loc = params[:, :K]
        tril = (params[:, K:] @ self.placement).view(-1, K, K)
        tril = torch.where(self.diagonal, torch.nn.functional.softplus(tril) + 1e-5, tril)
        z = loc + (tril @ torch.randn(batch.shape[0], K, 1)).squeeze(-1)
        out = self.decoder(z)
        mu, sigma = out[:, :D], 1e-3 + torch.nn.functional.softplus(out[:, D:])
        distortion = (0.5 * math.log(2 * math.pi) + sigma.log() + 0.5 * ((u - mu) / sigma) ** 2).sum(1)
        diag = torch.diagonal(tril, dim1=1, dim2=2)
        rate = 0.5 * ((tril ** 2).sum((1, 2)) + (loc ** 2).sum(1) - K - 2 * diag.log().sum(1))
        return (distortion + rate).mean()


model = VAE()
optimizer = torch.optim.Adam(model.parameters(), 1e-3, foreach=True)


def step(batch):
    optimizer.zero_grad(set_to_none=True)
    loss = model(batch)
    loss.backward()
    optimizer.step()
    return loss


if sys.argv[1] == "compile":
    model.forward = torch.compile(model.forward)
data = torch.tensor(x)
times = []
for epoch in range(EPOCHS + 1):
    order = torch.randperm(ROWS)
    start = time.perf_counter()
    for first in range(0, ROWS - BATCH + 1, BATCH):
        step(data[order[first:first + BATCH]])
    times.append(time.perf_counter() - start)
report(throughput(times[1:]))

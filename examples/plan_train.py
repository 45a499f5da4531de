"""A small training script to try `torchext-profile plan` on (README: "Checkpoint planner").

    torchext-profile plan --budget 1.7MiB --out plan_out examples/plan_train.py --steps 1

Four residual blocks whose hidden activations dominate the step's memory, trained with SGD.
"""

import argparse

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.tanh(self.up(x)))


class Net(nn.Module):
    def __init__(self, width: int = 32, hidden: int = 256, depth: int = 4, classes: int = 10
                 ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[Block(width, hidden) for _ in range(depth)])
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=2)
args = parser.parse_args()

torch.manual_seed(0)
model = Net()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(256, 32), torch.randint(10, (256,))
for _ in range(args.steps):
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
print(f"loss after {args.steps} steps: {loss.item():.4f}")

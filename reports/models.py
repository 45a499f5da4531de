"""The real `torch.nn` models the studies measure, each with a batch maker and a loss.

Sizes are constructor arguments so that every study can run tiny (tests), quick (CPU) and full
(GPU) configurations of the same model. Dropout is off: two ways of writing the same step must
compute the same numbers, so their memory and time can be compared.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Module):
    """`depth` hidden Linear+ReLU layers of `width`, then a Linear head."""

    def __init__(self, in_features: int, width: int, depth: int, out_features: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        features = in_features
        for _ in range(depth):
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        layers.append(nn.Linear(features, out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv blocks (conv, ReLU, 2x2 max-pool) and a linear classifier, for 1x`side`² images.

    `features(x)` is the backbone (for the frozen-backbone study), `head` the classifier.
    """

    def __init__(self, channels: int = 16, side: int = 28, classes: int = 10) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * channels * (side // 4) ** 2, classes)
        self.side = side

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class TransformerLM(nn.Module):
    """Token embedding + `nn.TransformerEncoder` (causal mask) + a linear vocabulary head."""

    def __init__(self, vocab: int, d_model: int, heads: int, layers: int, seq_len: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)
        self.register_buffer("causal_mask",
                             nn.Transformer.generate_square_subsequent_mask(seq_len),
                             persistent=False)

    def hidden(self, tokens: torch.Tensor, block=None) -> torch.Tensor:
        """Encoder output; `block(layer, h, mask)` runs each layer (e.g. checkpointed)."""
        mask = self.causal_mask[: tokens.shape[1], : tokens.shape[1]]
        h = self.embed(tokens)
        for layer in self.encoder.layers:
            h = layer(h, src_mask=mask) if block is None else block(layer, h, mask)
        return h

    def forward(self, tokens: torch.Tensor, block=None) -> torch.Tensor:
        return self.head(self.hidden(tokens, block))


class LSTMLM(nn.Module):
    """Embedding + `nn.LSTM` + linear head; `forward` takes and returns the hidden state."""

    def __init__(self, vocab: int, embed: int, hidden: int, layers: int = 1) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens: torch.Tensor, state=None):
        out, state = self.lstm(self.embed(tokens), state)
        return self.head(out), state


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross entropy over a [batch, seq, vocab] logit tensor."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tokens(batch: int, seq_len: int, vocab: int, device: torch.device, seed: int = 0
           ) -> torch.Tensor:
    """A reproducible batch of token ids, shape [batch, seq_len + 1] (inputs + shifted targets)."""
    return torch.randint(vocab, (batch, seq_len + 1), generator=seeded(seed)).to(device)


def normal(*shape: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """A reproducible standard-normal tensor on `device`."""
    return torch.randn(*shape, generator=seeded(seed)).to(device)


def labels(batch: int, classes: int, device: torch.device, seed: int = 1) -> torch.Tensor:
    """Reproducible class labels in [0, classes)."""
    return torch.randint(classes, (batch,), generator=seeded(seed)).to(device)


def build(factory: Callable[[], nn.Module], device: torch.device, seed: int = 0) -> nn.Module:
    """`factory()` with weights that depend only on `seed` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory()
    return model.to(device)


# Model sizes per report size: tiny (tests, seconds), quick (CPU, minutes), full (GPU).
SIZES: dict[str, dict[str, dict[str, int]]] = {
    "mlp": {"tiny": dict(in_features=16, width=32, depth=2, out_features=10, batch=8),
            "quick": dict(in_features=256, width=512, depth=4, out_features=10, batch=64),
            "full": dict(in_features=1024, width=4096, depth=8, out_features=10, batch=256)},
    "cnn": {"tiny": dict(channels=4, side=8, classes=10, batch=2),
            "quick": dict(channels=16, side=28, classes=10, batch=32),
            "full": dict(channels=64, side=28, classes=10, batch=256)},
    "transformer": {"tiny": dict(vocab=50, d_model=16, heads=2, layers=1, seq_len=8, batch=2),
                    "quick": dict(vocab=1000, d_model=128, heads=4, layers=2, seq_len=64,
                                  batch=8),
                    "full": dict(vocab=32000, d_model=512, heads=8, layers=6, seq_len=512,
                                 batch=16)},
    "lstm": {"tiny": dict(vocab=50, embed=16, hidden=16, seq_len=8, batch=2),
             "quick": dict(vocab=1000, embed=128, hidden=256, seq_len=64, batch=16),
             "full": dict(vocab=32000, embed=512, hidden=1024, seq_len=256, batch=32)},
}


class Case:
    """A model, one batch for it, and its training loss: `case.loss()` runs the forward."""

    def __init__(self, name: str, model: nn.Module, batch: tuple[torch.Tensor, ...],
                 loss: Callable[..., torch.Tensor]) -> None:
        self.name = name
        self.model = model
        self.batch = batch
        self._loss = loss

    def loss(self) -> torch.Tensor:
        return self._loss(self.model, *self.batch)


def _classification_loss(model: nn.Module, x: torch.Tensor, labels: torch.Tensor
                         ) -> torch.Tensor:
    return F.cross_entropy(model(x), labels)


def _transformer_loss(model: TransformerLM, ids: torch.Tensor) -> torch.Tensor:
    return lm_loss(model(ids[:, :-1]), ids[:, 1:])


def _lstm_loss(model: LSTMLM, ids: torch.Tensor) -> torch.Tensor:
    return lm_loss(model(ids[:, :-1])[0], ids[:, 1:])


def case(name: str, size: str, device: torch.device, seed: int = 0) -> Case:
    """The model `name` ("mlp", "cnn", "transformer", "lstm") at `size`, with a batch and loss."""
    s = SIZES[name][size]
    targets = labels(s["batch"], 10, device, seed + 1)
    if name == "mlp":
        model = build(lambda: MLP(s["in_features"], s["width"], s["depth"], s["out_features"]),
                      device, seed)
        return Case("MLP", model, (normal(s["batch"], s["in_features"], device=device,
                                          seed=seed), targets), _classification_loss)
    if name == "cnn":
        model = build(lambda: SmallCNN(s["channels"], s["side"], s["classes"]), device, seed)
        images = normal(s["batch"], 1, s["side"], s["side"], device=device, seed=seed)
        return Case("small CNN", model, (images, targets), _classification_loss)
    if name == "transformer":
        model = build(lambda: TransformerLM(s["vocab"], s["d_model"], s["heads"], s["layers"],
                                            s["seq_len"]), device, seed)
        ids = tokens(s["batch"], s["seq_len"], s["vocab"], device, seed)
        return Case("TransformerEncoder LM", model, (ids,), _transformer_loss)
    if name == "lstm":
        model = build(lambda: LSTMLM(s["vocab"], s["embed"], s["hidden"]), device, seed)
        ids = tokens(s["batch"], s["seq_len"], s["vocab"], device, seed)
        return Case("LSTM LM", model, (ids,), _lstm_loss)
    raise ValueError(f"unknown model {name!r}; expected one of {sorted(SIZES)}")


MODEL_NAMES = ("mlp", "cnn", "transformer", "lstm")

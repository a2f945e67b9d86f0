"""PyTorch peer of the training bench (bench/train.ts, issue #13).

The reference causal LM (vocab 64, d 64, 2 pre-LN layers, 4 heads, FFN 4d, T 32, B 32) dense
and with a 4-expert top-1 MoE FFN, built as moec's std.nn builds them (Linear with bias,
exact GELU, LayerNorm eps 1e-5, learned positions, a bias-free router gate, top-1 of the
softmax renormalised). The MoE dispatches sparsely by index: each expert runs only on the
rows routed to it and its outputs are added back with index_add_. One step is zero_grad,
forward, cross-entropy, backward and AdamW (decay on matrices only, as moec's AdamW).

Prints one JSON object: torch version, threads, and per model its parameter count and the
median (and min) ms of `--steps` timed steps after `--warmup` untimed ones.

    python3 bench/peers/torch_train.py [--threads 1] [--warmup 3] [--steps 10]
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

V, D, LAYERS, HEADS, T, B, EXPERTS = 64, 64, 2, 4, 32, 32, 4


class FFN(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class TopOneMoE(nn.Module):
    """softmax(x·Wgᵀ), top-1, weight p/p (renormalised, moec's TopK default), sparse experts."""

    def __init__(self, d, hidden, experts):
        super().__init__()
        self.gate = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(FFN(d, hidden) for _ in range(experts))

    def forward(self, x):
        lead, d = x.shape[:-1], x.shape[-1]
        rows = x.reshape(-1, d)
        probs = F.softmax(self.gate(rows), dim=-1)
        top, choice = probs.topk(1, dim=-1)
        weight = top / top.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(rows)
        for e, expert in enumerate(self.experts):
            idx = (choice[:, 0] == e).nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            out.index_add_(0, idx, expert(rows[idx]) * weight[idx])
        return out.reshape(*lead, d)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        split = lambda y: y.reshape(b, t, self.heads, hd).permute(0, 2, 1, 3)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = (q @ k.transpose(-1, -2)) * (1.0 / hd**0.5)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(mask, float("-inf"))
        mixed = (F.softmax(scores, dim=-1) @ v).permute(0, 2, 1, 3).reshape(b, t, d)
        return self.o(mixed)


class Block(nn.Module):
    def __init__(self, moe):
        super().__init__()
        self.ln_1 = nn.LayerNorm(D)
        self.attn = Attention(D, HEADS)
        self.ln_2 = nn.LayerNorm(D)
        self.mlp = TopOneMoE(D, 4 * D, EXPERTS) if moe else FFN(D, 4 * D)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class LM(nn.Module):
    def __init__(self, moe):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.pos = nn.Embedding(T, D)
        self.blocks = nn.ModuleList(Block(moe) for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, V)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def bench(moe, warmup, steps):
    torch.manual_seed(0)
    model = LM(moe)
    # Decay on matrices that are not embedding tables, as moec's AdamW (docs/training.md).
    tables = (model.embed.weight, model.pos.weight)
    matrix = lambda p: p.dim() >= 2 and not any(p is t for t in tables)
    decay = [p for p in model.parameters() if matrix(p)]
    rest = [p for p in model.parameters() if not matrix(p)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=1e-3
    )
    gen = torch.Generator().manual_seed(7)

    def step():
        tokens = torch.randint(0, V, (B, T), generator=gen)
        targets = torch.randint(0, V, (B, T), generator=gen)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(tokens).reshape(-1, V), targets.reshape(-1))
        loss.backward()
        opt.step()
        return (time.perf_counter() - t0) * 1e3, loss.item()

    for _ in range(warmup):
        step()
    times, loss = [], 0.0
    for _ in range(steps):
        ms, loss = step()
        times.append(ms)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "ms": statistics.median(times),
        "min_ms": min(times),
        "loss": loss,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dense": bench(False, args.warmup, args.steps),
        "moe": bench(True, args.warmup, args.steps),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

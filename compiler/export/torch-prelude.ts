/**
 * The hand-written Python every exported module starts with: the builtins the language has
 * and torch spells differently, the safetensors reader and writer (used when the
 * `safetensors` package is absent), `PerTask`, and the routers and `MoE`. Each router
 * follows its lowering in compiler/library/route/ (and lower/routing/common.ts) exactly:
 * ties to the lower index, slot-major capacity ranking, the same renormalisation. Experts
 * run sparse: the rows routed to an expert are gathered by index (index_select) and its
 * weighted output added back by index (index_add_), never a dense mask over all tokens.
 */
export const TORCH_PRELUDE = String.raw`import json
import math
import struct

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- weights I/O

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "BOOL": torch.bool,
}

try:  # the safetensors package when it is installed; the small reader and writer below otherwise
    from safetensors.torch import load_file, save_file
except ImportError:

    def load_file(path, device="cpu"):
        """The tensors of a safetensors file, by name."""
        with open(path, "rb") as f:
            data = f.read()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            dtype = _ST_DTYPES[info["dtype"]]
            raw = bytearray(data[8 + n + begin : 8 + n + end])
            t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            out[name] = t.reshape(info["shape"]).to(device)
        return out

    def save_file(tensors, path, metadata=None):
        """Writes tensors (a dict by name) as a safetensors file."""
        names = {v: k for k, v in _ST_DTYPES.items()}
        header, chunks, at = {}, [], 0
        for name in sorted(tensors):
            t = tensors[name].detach().contiguous().cpu()
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [at, at + len(raw)]}
            chunks.append(raw)
            at += len(raw)
        if metadata:
            header["__metadata__"] = dict(metadata)
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


# ----------------------------------------------------------------------------- names


def keep_names(module, **renames):
    """Members whose moec name Python or nn.Module takes (eval, type, lambda) live under another
    attribute (eval_); state_dict() and load_state_dict() still use the moec name, so the keys
    are moec's. renames: attribute -> moec name."""
    names = module.__dict__.setdefault("_moec_names", {})
    if not names:
        module._register_state_dict_hook(_names_to_moec)
        module._register_load_state_dict_pre_hook(lambda state, prefix, *_: _names_from_moec(module, state, prefix))
    names.update(renames)


def submodule(module, path):
    """The submodule at a moec path (state_dict()'s names, renamed attributes included)."""
    for name in path.split("."):
        attrs = {moe: py for py, moe in module.__dict__.get("_moec_names", {}).items()}
        module = getattr(module, attrs.get(name, name))
    return module


def _rename_keys(state, prefix, names):
    items = list(state.items())
    state.clear()
    for k, v in items:
        if k.startswith(prefix):
            head, dot, rest = k[len(prefix):].partition(".")
            k = prefix + names.get(head, head) + dot + rest
        state[k] = v


def _names_to_moec(module, state, prefix, local_metadata):
    _rename_keys(state, prefix, module._moec_names)


def _names_from_moec(module, state, prefix):
    _rename_keys(state, prefix, {moe: py for py, moe in module._moec_names.items()})


# ----------------------------------------------------------------------------- builtins


def activation(x, fn):
    """The activation an Act value names."""
    if fn == "identity":
        return x
    if fn == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    return {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[fn](x)


def variance(x, axis=-1, keepdim=False):
    """Biased variance, as LayerNorm uses."""
    return x.var(dim=axis, unbiased=False, keepdim=keepdim)


def take(table, ids):
    """Rows of table [n, d] at integer ids [...]: [..., d]."""
    return table.index_select(0, ids.reshape(-1).long()).reshape(*ids.shape, table.shape[-1])


def causal_mask(scores):
    """-inf where the key comes after the query (the last two dims)."""
    q, k = scores.shape[-2], scores.shape[-1]
    future = torch.ones(q, k, dtype=torch.bool, device=scores.device).triu(1)
    return scores.masked_fill(future, float("-inf"))


def positions(ids):
    """Each element's index along the last axis."""
    return torch.arange(ids.shape[-1], dtype=torch.int32, device=ids.device).expand(ids.shape)


# ----------------------------------------------------------------------------- training


def cross_entropy(logits, labels, ignore_index=-100, label_smoothing=0.0):
    """Mean over the positions whose label is not ignore_index of (1 - e)·(-log p_y) +
    e·mean_j(-log p_j); 0 when every position is ignored (docs/training.md)."""
    C = logits.shape[-1]
    logp = torch.log_softmax(logits.reshape(-1, C), -1)
    y = labels.reshape(-1).long()
    keep = y != ignore_index
    inside = keep & (y >= 0) & (y < C)
    nll = -logp.gather(1, y.clamp(0, C - 1).unsqueeze(1)).squeeze(1) * inside
    per = (1 - label_smoothing) * nll + label_smoothing * (-logp.mean(-1))
    count = keep.sum()
    return (per * keep).sum() / count.clamp(min=1)


def distill(student, teachers, temperature=1.0, weights=None, labels=None):
    """τ²·KL(Σ_k w_k·softmax(t_k/τ) ‖ softmax(s/τ)), summed over classes, averaged over the
    rows of the flattened [N, C] view. weights: uniform when not given, a list (one per
    teacher), or a tensor [..., K] (one row per example); labels: CA-MKD's confidence-aware
    weights instead (_confidence_weights)."""
    C = student.shape[-1]
    ts = [t.reshape(-1, C) for t in teachers]
    if labels is not None:
        weights = _confidence_weights(ts, labels)
    elif weights is None:
        weights = [1.0 / len(ts)] * len(ts)
    if torch.is_tensor(weights):
        # Per example: column k weighs teacher k on each row.
        weights = weights.reshape(-1, len(ts)).unbind(-1)
        weights = [w.unsqueeze(-1) for w in weights]
    p = sum(w * torch.softmax(t / temperature, -1) for w, t in zip(weights, ts))
    logq = torch.log_softmax(student.reshape(-1, C) / temperature, -1)
    return temperature**2 * F.kl_div(logq, p, reduction="batchmean")


def _confidence_weights(teachers, labels):
    """CA-MKD (Zhang et al. 2022), per example: with L_k teacher k's cross-entropy on the label
    (temperature 1), w_k = (1 - softmax_k(L)) / (K - 1), so a teacher that predicts the label
    better weighs more; a label outside [0, C) weighs the teachers equally. [N, K]."""
    K = len(teachers)
    N, C = teachers[0].shape
    if K == 1:
        return teachers[0].new_ones(N, 1)
    y = labels.reshape(-1, 1).long()
    hit = (y >= 0) & (y < C)
    losses = torch.stack([-torch.log_softmax(t, -1).gather(1, y.clamp(0, C - 1)).squeeze(1) for t in teachers], -1)
    losses = losses * hit  # L_k = 0 for every teacher: equal weights
    return (1 - torch.softmax(losses, -1)) / (K - 1)


def router_losses(model):
    """Each trainable MoE layer's auxiliary losses from its last forward, weighted by its
    router's balance and z_loss, summed: what a train program adds to its loss."""
    total = 0.0
    for m in model.modules():
        if not isinstance(m, MoE) or not m.aux:
            continue
        params = list(m.router.parameters())
        if not params or not all(p.requires_grad for p in params):
            continue
        total = total + getattr(m.router, "balance", 0.0) * m.aux["balance"]
        total = total + getattr(m.router, "z_loss", 0.0) * m.aux["z"]
    return total


def adamw(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, max_norm=0.0, groups=()):
    """torch.optim.AdamW over the trainable parameters: weight decay on matrices (rank >= 2)
    that are not lookup tables (a class's tables, nn.Embedding), none on the rest. groups are
    std.optim's Group as dicts: the trainable parameters whose dotted path ends with one of
    params ("*" is any one name) train at lr_scale times lr, with decay "auto" (the split
    above), "on" or "off", and, given rows, only those rows (train_step keeps the others)."""
    tables = set()
    for m in model.modules():
        names = ("weight",) if isinstance(m, nn.Embedding) else getattr(type(m), "tables", ())
        tables.update(id(m._parameters[n]) for n in names if m._parameters.get(n) is not None)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    settings = {}  # parameter name -> its group's index and the group
    for i, g in enumerate(groups):
        for pattern in g["params"]:
            hits = [n for n, _ in model.named_parameters() if _path_matches(n, pattern)]
            if not hits:
                raise ValueError(f"parameter group {i + 1}: pattern {pattern!r} matches no parameter")
            hits = [n for n, p in trainable if n in hits]
            if not hits:
                raise ValueError(f"parameter group {i + 1}: pattern {pattern!r} matches only frozen parameters")
            for n in hits:
                if settings.get(n, (i,))[0] != i:
                    raise ValueError(f"parameter {n} is in parameter groups {settings[n][0] + 1} and {i + 1}")
                settings[n] = (i, g)
    param_groups = {}  # (group index or -1, decay) -> torch param group, in a stable order
    for n, p in trainable:
        i, g = settings.get(n, (-1, {}))
        decay = {"on": True, "off": False}.get(g.get("decay", "auto"), p.dim() >= 2 and id(p) not in tables)
        key = (i, decay)
        if key not in param_groups:
            param_groups[key] = {"params": [], "lr": lr * g.get("lr_scale", 1.0),
                                 "weight_decay": weight_decay if decay else 0.0}
            rows = sorted(set(g.get("rows", ())))
            if rows:
                param_groups[key]["rows"] = rows
        rows = param_groups[key].get("rows", ())
        if rows and (p.dim() == 0 or rows[-1] >= p.shape[0]):
            raise ValueError(f"parameter group {i + 1}: rows {rows} are not all rows of {n} {list(p.shape)}")
        param_groups[key]["params"].append(p)
    opt = torch.optim.AdamW(list(param_groups.values()), lr=lr, betas=betas, eps=eps)
    opt.max_norm = max_norm
    return opt


def _path_matches(path, pattern):
    """Whether the dotted path ends with the pattern's names ("*" is any one name)."""
    names, want = path.split("."), pattern.split(".")
    return len(want) <= len(names) and all(w in ("*", n) for w, n in zip(want, names[-len(want):]))


def train_step(model, optimizer, **inputs):
    """One step as moec train takes it: the loss, its gradients, clip_grad_norm_ (max_norm > 0),
    AdamW. Returns the loss."""
    optimizer.zero_grad()
    loss = model(**inputs)
    loss.backward()
    # Experts and per-task instances no row was routed to reach the loss in moec's graph with
    # a zero gradient (weight decay and the moments still step); sparse dispatch gave them none.
    for m in model.modules():
        if isinstance(m, (MoE, PerTask)) or (isinstance(m, LoRA) and m.tasks is not None):
            for p in m.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)
    # A group's rows are the only rows that train: the others get a zero gradient before the
    # clipping (so no Adam moments and no step), and weight decay would still move them, so
    # they are put back after the step, bit for bit.
    idle = []
    for group in optimizer.param_groups:
        for p in group["params"] if "rows" in group else ():
            if p.grad is None:
                continue
            rest = torch.ones(p.shape[0], dtype=torch.bool, device=p.device)
            rest[group["rows"]] = False
            p.grad[rest] = 0
            if group["weight_decay"] != 0:
                idle.append((p, rest, p.detach()[rest].clone()))
    if optimizer.max_norm > 0:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], optimizer.max_norm)
    optimizer.step()
    with torch.no_grad():
        for p, rest, before in idle:
            p[rest] = before
    return loss


# ----------------------------------------------------------------------------- per task


class PerTask(nn.ModuleDict):
    """One instance per task, by task name; each example runs through its own task's instance.
    An example whose task id is -1 (no task) passes through unchanged."""

    def forward(self, *args):
        *inputs, task = args
        x = inputs[0]
        out = None
        for t, module in enumerate(self.values()):
            rows = (task == t).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            y = module(*[a.index_select(0, rows) for a in inputs])
            if out is None:
                out = x.clone() if y.shape[1:] == x.shape[1:] else y.new_zeros(x.shape[0], *y.shape[1:])
            out = out.index_copy(0, rows, y)
        return x.clone() if out is None else out


# ----------------------------------------------------------------------------- adapters


def _add_lora_pair(owner, in_features, out_features, r, alpha):
    """owner.lora_A [r, in] and owner.lora_B [out, r] as PEFT initialises them (B zero), and
    owner.scaling = alpha / r."""
    owner.lora_A = nn.Linear(in_features, r, bias=False)
    owner.lora_B = nn.Linear(r, out_features, bias=False)
    nn.init.kaiming_uniform_(owner.lora_A.weight, a=math.sqrt(5))
    nn.init.zeros_(owner.lora_B.weight)
    owner.scaling = alpha / r


def _of_task(value, task):
    """A per-task option's value for one task (a dict by task name), or the one shared value."""
    return value[task] if isinstance(value, dict) else value


def _task_pairs(module, tasks, in_features, out_features, r, alpha):
    """One LoRA pair per task under module, by task name (q.<task>.lora_A.weight)."""
    for t in tasks:
        pair = nn.Module()
        module.add_module(t, pair)
        _add_lora_pair(pair, in_features, out_features, _of_task(r, t), _of_task(alpha, t))


def _per_task_delta(module, tasks, task, x, y, dropout):
    """y plus each example's own task's LoRA update (rows by the leading axis); task id -1 (no
    task) keeps y."""
    for t, name in enumerate(tasks):
        rows = (task == t).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        pair = getattr(module, name)
        delta = pair.lora_B(pair.lora_A(dropout(x.index_select(0, rows))))
        y = y.index_add(0, rows, delta * pair.scaling)
    return y


class LoRA(nn.Module):
    """base(x) + (alpha / r)·(x·Aᵀ)·Bᵀ, unmerged, with PEFT's names: lora_A.weight [r, in],
    lora_B.weight [out, r]. A base bound elsewhere is shared, not owned: its weights keep the
    name of the binding that made it (several LoRA experts sit on one frozen base). A base
    made with the LoRA (owns_base) has its weights beside it: q.weight, q.lora_A.weight.
    With tasks, each task has its own pair (q.<task>.lora_A.weight) and an example runs its
    task's; task id -1 (no task) gets the base alone."""

    def __init__(self, base, in_features, out_features, r=8, alpha=8.0, dropout=0.0,
                 owns_base=False, tasks=None, merge=False):
        super().__init__()
        self.merge = merge  # moec export --merge-adapters: one matmul by W + (alpha / r)·B·A
        if in_features is None or out_features is None:  # a base handed in: its own sizes
            if not (hasattr(base, "in_features") and hasattr(base, "out_features")):
                raise ValueError(f"LoRA on a {type(base).__name__} handed in: its sizes are unknown (Linear layers only)")
            in_features, out_features = base.in_features, base.out_features
        self.__dict__["base"] = base  # not a submodule: no second copy in state_dict()
        if owns_base:
            adopt(self, base)
        self.tasks = tuple(tasks) if tasks is not None else None
        if tasks is None:
            _add_lora_pair(self, in_features, out_features, r, alpha)
        else:  # ranks and alphas may differ per task (dicts by task name)
            _task_pairs(self, self.tasks, in_features, out_features, r, alpha)
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x, task=None):
        if self.merge and self.tasks is None and _is_linear(self.base):
            return _merged_linear(self.base, self.lora_A, self.lora_B, self.scaling, x)
        y = self.base(x)
        if self.tasks is None:
            return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling
        return _per_task_delta(self, self.tasks, task, x, y, self.lora_dropout)


def _is_linear(module):
    """Whether a layer is y = x·Wᵀ (+ b), the base moec --merge-adapters merges a LoRA into."""
    return hasattr(module, "in_features") and isinstance(module._parameters.get("weight"), torch.Tensor)


def _merged_linear(base, lora_A, lora_B, scaling, x):
    """x·(W + scaling·B·A)ᵀ (+ b): a LoRA merged into its Linear base."""
    y = x @ (base.weight + (lora_B.weight @ lora_A.weight) * scaling).t()
    bias = base._parameters.get("bias")
    return y if bias is None else y + bias


def modules(items):
    """A list of instances (lists of lists for groups of experts) as nested nn.ModuleLists."""
    return nn.ModuleList(modules(i) if isinstance(i, (list, tuple)) else i for i in items)


def adopt(owner, part):
    """Registers part's weights and layers on owner too, so owner's state_dict() names them
    (moec keeps a name's weights under it when the name is bound again). Returns part."""
    for n, p in part._parameters.items():
        owner.register_parameter(n, p)
    for n, m in part._modules.items():
        owner.add_module(n, m)
    if part.__dict__.get("_moec_names"):
        keep_names(owner, **part._moec_names)
    return part


class WithAdapter(nn.Module):
    """base with a module adapter (a Bottleneck, ...): adapter(base(x)). A base bound elsewhere
    is shared (its weights keep the name of the binding that made it); one made with the
    adapter (owns_base) has its weights beside the adapter's. The adapter's weights are this
    module's (tuned.down.weight; a PerTask's under each task, tuned.<task>.down.weight)."""

    def __init__(self, base, adapter, owns_base=False):
        super().__init__()
        self.__dict__["base"] = base  # not a submodule: no second copy in state_dict()
        self.__dict__["adapter"] = adapter
        for part in [base, adapter] if owns_base else [adapter]:
            adopt(self, part)

    def forward(self, x, *task):  # task ids for a per-task adapter (a PerTask)
        return self.adapter(self.base(x), *task)


def _lora_targets(base, targets):
    """The layers inside base whose moec path (below base) ends with one of the patterns ("*"
    is any one name), as PEFT's target_modules: (path, owner, attribute, layer) each."""

    def matches(path):
        parts = path.split(".")
        for pattern in targets:
            ps = pattern.split(".")
            if len(ps) <= len(parts) and all(p in ("*", q) for p, q in zip(ps, parts[-len(ps):])):
                return True
        return False

    def walk(module, prefix):
        names = module.__dict__.get("_moec_names", {})
        for attr, child in module._modules.items():
            if child is None:
                continue
            path = prefix + names.get(attr, attr)
            yield path, module, attr, child
            yield from walk(child, path + ".")

    found = []
    for path, owner, attr, module in walk(base, ""):
        if not matches(path):
            continue
        if not (hasattr(module, "in_features") and hasattr(module, "out_features")):
            raise ValueError(f"LoRA target {path}: the exported module puts LoRA on Linear layers only")
        found.append((path, owner, attr, module))
    return found


def lora_targets(base, targets, r=8, alpha=8.0, dropout=0.0, merge=False):
    """LoRA on every layer inside base (made with it) that a target names: each becomes a LoRA
    owning it, its weights beside the LoRA's (attn.q.weight, attn.q.lora_A.weight). Returns base."""
    for path, owner, attr, module in _lora_targets(base, targets):
        lora = LoRA(module, module.in_features, module.out_features, r, alpha, dropout, owns_base=True, merge=merge)
        setattr(owner, attr, lora)
    return base


class TargetedLoRA(nn.Module):
    """LoRA with targets on a base bound elsewhere: the pairs sit in the base's targeted layers
    (ffn.up.lora_A.weight, as moec names them) and act only while the base runs through this
    module; the base applied by its own name stays the base. No weights of its own, unless it
    owns a base made with it (owns_base: the base's weights are then this module's). With
    tasks, each targeted layer has one pair per task (ffn.up.<task>.lora_A.weight), the module
    takes the task ids last, and each example gets its own task's update (-1: none)."""

    def __init__(self, base, targets, r=8, alpha=8.0, dropout=0.0, merge=False, tasks=None,
                 owns_base=False):
        super().__init__()
        self.__dict__["base"] = base  # not a submodule: no second copy in state_dict()
        if owns_base:
            adopt(self, base)
        self.active, self.merge, self.task = False, merge, None
        self.tasks = tuple(tasks) if tasks is not None else None
        self.lora_dropout = nn.Dropout(dropout)
        for path, owner, attr, module in _lora_targets(base, targets):
            if tasks is None:
                _add_lora_pair(module, module.in_features, module.out_features, r, alpha)
            else:
                _task_pairs(module, self.tasks, module.in_features, module.out_features, r, alpha)
            module.register_forward_hook(self._delta)

    def _delta(self, module, args, y):
        if not self.active:
            return None
        if self.tasks is not None:
            return _per_task_delta(module, self.tasks, self.task, args[0], y, self.lora_dropout)
        if self.merge:
            return _merged_linear(module, module.lora_A, module.lora_B, module.scaling, args[0])
        return y + module.lora_B(module.lora_A(self.lora_dropout(args[0]))) * module.scaling

    def forward(self, *args):
        if self.tasks is not None:
            *args, self.task = args
        self.active = True
        try:
            return self.base(*args)
        finally:
            self.active, self.task = False, None


# ----------------------------------------------------------------------------- routing


def _top(scores, k):
    """The k largest entries of each row, ties to the lower index: (indices, values)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    return order, scores.gather(-1, order)


class Router(nn.Module):
    """A router's options; MoE builds its parameters once it knows d, the experts and the tasks."""

    needs = None  # what it routes on beside x: None, "task" or "tokens"

    def build(self, d, num_experts, tasks):
        self.d, self.num_experts, self.tasks = d, num_experts, tasks

    def aux_losses(self, logits, wanted):
        """Switch balance loss E·Σ f_e·P_e and z-loss mean(logsumexp²) from logits [N, E] and
        the wanted expert of every assignment."""
        E = self.num_experts
        f = torch.bincount(wanted, minlength=E).to(logits.dtype) / wanted.numel()
        balance = E * (f * torch.softmax(logits, -1).mean(0)).sum()
        z = (torch.logsumexp(logits, -1) ** 2).mean()
        return {"balance": balance, "z": z}


class _TokenChoice(Router):
    """Top-k token choice from router logits, as lower/routing/common.ts lowers it."""

    def choose(self, logits, k, softmax_after, renormalize):
        chosen, picked = _top(logits, k)
        if softmax_after:
            weights = torch.softmax(picked, -1)
        else:
            weights = torch.softmax(logits, -1).gather(-1, chosen)
            if renormalize:
                weights = weights / weights.sum(-1, keepdim=True)
        return chosen, weights

    def logits(self, xf, task, lead, embed, level="token"):
        """Router logits [N, E]: from each token (or each sequence's mean), beside a learned
        task embedding when embed > 0."""
        d, N = self.d, xf.shape[0]
        if level == "task":
            ids = task.long().clamp(min=0)
            return self._per_token(self.task_logits.weight.index_select(0, ids), task, lead, N)
        w = self.gate.weight
        wx = w[:, :d] if embed > 0 else w
        if level == "sequence":
            seq = task.numel()
            logits = xf.reshape(seq, N // seq, d).mean(1) @ wx.t()
        else:
            logits = xf @ wx.t()
        if embed > 0:
            ids = task.long().clamp(min=0)  # "no task" (-1) uses task 0's embedding
            term = self.task_embedding.weight.index_select(0, ids) @ w[:, d:].t()
            logits = logits + (term.reshape(logits.shape) if level == "sequence" else self._per_token(term, task, lead, N))
        if level == "sequence":
            logits = self._per_token(logits, task, lead, N)
        return logits

    @staticmethod
    def _per_token(per_task, task, lead, N):
        shape = list(task.shape) + [1] * (len(lead) - task.dim()) + [per_task.shape[-1]]
        return per_task.reshape(shape).expand(*lead, per_task.shape[-1]).reshape(N, -1)


class TopK(_TokenChoice):
    """Top-k token choice (docs/routing.md): each token takes the k experts with the highest
    logits; with a capacity factor each expert serves at most ceil(f·k·N/E) assignments,
    ranked slot-major (every first choice before any second choice)."""

    def __init__(self, k=2, softmax="before", renormalize=None, capacity=0.0, overflow="residual",
                 noise=0.0, balance=0.0, z_loss=0.0, task_embed=0):
        super().__init__()
        self.k, self.softmax, self.capacity, self.overflow = k, softmax, capacity, overflow
        self.renormalize = k > 1 if renormalize is None else renormalize
        self.noise, self.balance, self.z_loss, self.task_embed = noise, balance, z_loss, task_embed
        self.needs = "task" if task_embed > 0 else None

    def build(self, d, num_experts, tasks):
        super().build(d, num_experts, tasks)
        self.gate = nn.Linear(d + self.task_embed, num_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)
        if self.task_embed > 0:
            self.task_embedding = nn.Embedding(len(tasks), self.task_embed)
            nn.init.normal_(self.task_embedding.weight, std=0.02)

    def route(self, xf, ids, lead):
        logits = self.logits(xf, ids, lead, self.task_embed)
        k = min(self.k, self.num_experts)
        chosen, weights = self.choose(logits, k, self.softmax == "after", self.renormalize)
        return logits, chosen, weights, self.capacity, self.overflow == "zero"


class TaskRoute(_TokenChoice):
    """Task-aware top-k: from token and task embedding, a sequence's mean, or a task table."""

    needs = "task"

    def __init__(self, level="token", k=1, embed=16):
        super().__init__()
        self.level, self.k, self.embed = level, k, embed

    def build(self, d, num_experts, tasks):
        super().build(d, num_experts, tasks)
        if self.level == "task":
            self.task_logits = nn.Embedding(len(tasks), num_experts)
            nn.init.zeros_(self.task_logits.weight)
        else:
            self.gate = nn.Linear(d + self.embed, num_experts, bias=False)
            self.task_embedding = nn.Embedding(len(tasks), self.embed)
            nn.init.normal_(self.gate.weight, std=0.02)
            nn.init.normal_(self.task_embedding.weight, std=0.02)

    def route(self, xf, ids, lead):
        logits = self.logits(xf, ids, lead, 0 if self.level == "task" else self.embed, self.level)
        chosen, weights = self.choose(logits, min(self.k, self.num_experts), False, True)
        return logits, chosen, weights, 0.0, False


class Hash(Router):
    """Hash Layers: expert ((A·u + B) mod p) mod E of each token id, weight 1."""

    needs = "tokens"

    def __init__(self, seed=0):
        super().__init__()
        p = 2**31 - 1
        self.A, self.B = pow(48271, 2 * seed + 2, p), pow(48271, 2 * seed + 1, p)

    def route(self, xf, ids, lead):
        p = 2**31 - 1
        u = ids.reshape(-1).long().clamp(min=0) % p
        chosen = ((self.A * u + self.B) % p % self.num_experts).unsqueeze(1)
        return None, chosen, torch.ones(chosen.shape, dtype=xf.dtype, device=xf.device), 0.0, False


class ExpertChoice(Router):
    """Each expert takes its c = ceil(capacity·N/E) highest-scoring tokens (ties to the lower
    token), weighted by softmax(x·Wᵀ) over the experts."""

    def __init__(self, capacity=1.0):
        super().__init__()
        self.capacity = capacity

    def build(self, d, num_experts, tasks):
        super().build(d, num_experts, tasks)
        self.gate = nn.Linear(d, num_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)


class TaskMap(Router):
    """A fixed task → experts map, equally weighted: no parameters."""

    needs = "task"

    def __init__(self, map):
        super().__init__()
        self.map = map

    def table(self, dtype, device):
        E = self.num_experts
        rows = [[1.0 / len(self.map[t]) if e in self.map[t] else 0.0 for e in range(E)] for t in self.tasks]
        return torch.tensor(rows, dtype=dtype, device=device)


class Soft(Router):
    """Every expert, weighted by softmax(x·Wᵀ)."""

    def build(self, d, num_experts, tasks):
        super().build(d, num_experts, tasks)
        self.gate = nn.Linear(d, num_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=0.02)


class Grouped(Router):
    """Two-level routing (AT-MoE): every expert, weight w(g)·w(e | g), each a softmax or a
    sigmoid normalisation (normalize). Set self.pin (one weight per group, summing to 1) to
    fix the group weights, as moec run --pin-groups does. on="instruction": the weights are
    those of the features MoE.forward is given beside x, one vector per sequence."""

    def __init__(self, outer="softmax", inner="softmax", pin=(), on="token"):
        super().__init__()
        self.outer, self.inner, self.pin, self.on = outer, inner, list(pin), on

    def build(self, d, num_experts, tasks, groups=None):
        super().build(d, num_experts, tasks)
        self.groups = list(groups or [num_experts])
        self.group_gate = nn.Linear(d, len(self.groups), bias=False)
        self.expert_gate = nn.Linear(d, num_experts, bias=False)
        nn.init.normal_(self.group_gate.weight, std=0.02)
        nn.init.normal_(self.expert_gate.weight, std=0.02)

    @staticmethod
    def _norm(logits, how):
        if how == "normalize":
            s = torch.sigmoid(logits)
            return s / s.sum(-1, keepdim=True)
        return torch.softmax(logits, -1)

    def weights(self, xf):
        """Each token's weight of every expert, [N, E] (group-major expert order)."""
        if self.pin:
            wg = torch.tensor(self.pin, dtype=xf.dtype, device=xf.device).expand(xf.shape[0], -1)
        else:
            wg = self._norm(xf @ self.group_gate.weight.t(), self.outer)
        el = xf @ self.expert_gate.weight.t()
        parts = torch.split(el, self.groups, dim=-1)
        return torch.cat([wg[:, g : g + 1] * self._norm(p, self.inner) for g, p in enumerate(parts)], -1)


class TokenMix(Router):
    """Mixture of tokens: groups of group tokens (across the batch at each position, or along
    the sequence) mixed per expert by a softmax over the group (temperature); discrete: each
    expert takes its group's highest-scoring token (ties to the first), weight 1."""

    def __init__(self, group=32, temperature=1.0, emit="merge", discrete=False, axis="batch"):
        super().__init__()
        self.group, self.temperature, self.emit = group, temperature, emit
        self.discrete, self.axis = discrete, axis

    def build(self, d, num_experts, tasks):
        super().build(d, num_experts, tasks)
        self.controller = nn.Linear(d, num_experts, bias=False)
        nn.init.normal_(self.controller.weight, std=0.02)


class MoE(nn.Module):
    """A mixture-of-experts layer: router, experts (an nn.ModuleList) and shared experts that
    see every token. Its last auxiliary losses (balance, z) are in self.aux after forward."""

    def __init__(self, router, experts, shared=(), d=None, tasks=(), bound=()):
        super().__init__()
        grouped = len(experts) > 0 and isinstance(experts[0], (list, tuple, nn.ModuleList))
        # Parts bound to names elsewhere (bound: "router", "experts", "shared") keep their
        # weights under those names, so this layer holds them without registering them again.
        def own(name, module):
            if name in bound:
                self.__dict__[name] = module  # held, not registered: no second state_dict() copy
            else:
                setattr(self, name, module)

        if grouped:
            own("experts", nn.ModuleList(nn.ModuleList(g) for g in experts))
        else:
            own("experts", nn.ModuleList(experts))
        self.leaves = [e for g in self.experts for e in g] if grouped else list(self.experts)
        if shared:
            own("shared", nn.ModuleList(shared))
        own("router", router)
        if grouped:
            router.build(d, len(self.leaves), tuple(tasks), [len(g) for g in experts])
        else:
            router.build(d, len(self.leaves), tuple(tasks))
        self.aux = {}

    def forward(self, x, ids=None):
        if isinstance(self.router, TokenMix):
            out = self._token_mix(x)
            for s in getattr(self, "shared", ()):
                out = out + s(x)
            return out
        lead, d = x.shape[:-1], x.shape[-1]
        xf = x.reshape(-1, d)
        N = xf.shape[0]
        r = self.router
        if isinstance(r, (TopK, TaskRoute, Hash)):
            out = self._token_choice(xf, ids, lead)
        elif isinstance(r, ExpertChoice):
            out = self._expert_choice(xf)
        elif isinstance(r, TaskMap):
            w = r.table(x.dtype, x.device).index_select(0, ids.long().reshape(-1))
            w = w.reshape(*ids.shape, *[1] * (len(lead) - ids.dim()), -1).expand(*lead, -1).reshape(N, -1)
            out = self._dense(xf, w)
        elif isinstance(r, Grouped) and r.on == "instruction":
            # One instruction per sequence ([..., d], x [..., T, d]), at every position.
            per_position = ids.reshape(*lead[:-1], 1, d).expand(*lead, d).reshape(N, d)
            out = self._dense(xf, r.weights(per_position))
        elif isinstance(r, Grouped):
            out = self._dense(xf, r.weights(xf))
        elif isinstance(r, Soft):
            out = self._dense(xf, torch.softmax(xf @ r.gate.weight.t(), -1))
        else:
            raise NotImplementedError(type(r).__name__)
        for s in getattr(self, "shared", ()):
            out = out + s(xf)
        return out.reshape(*lead, out.shape[-1])

    def _dispatch(self, xf, experts, tokens, weights, out):
        """Assignment i sends row tokens[i] to expert experts[i] with weight weights[i]; each
        expert runs once on the rows it was given."""
        for e, expert in enumerate(self.leaves):
            sel = (experts == e).nonzero().squeeze(1)
            if sel.numel() == 0:
                continue
            rows = tokens.index_select(0, sel)
            y = expert(xf.index_select(0, rows)) * weights.index_select(0, sel).unsqueeze(1)
            if out is None:
                out = y.new_zeros(xf.shape[0], y.shape[1])
            out = out.index_add(0, rows, y)
        return xf.new_zeros(xf.shape) if out is None else out

    def _token_choice(self, xf, ids, lead):
        N = xf.shape[0]
        logits, chosen, weights, capacity, overflow_zero = self.router.route(xf, ids, lead)
        k, E = chosen.shape[1], self.router.num_experts
        experts = chosen.t().reshape(-1)  # slot-major: every first choice, then every second
        w = weights.t().reshape(-1)
        tokens = torch.arange(N, device=xf.device).repeat(k)
        if logits is not None:
            self.aux = self.router.aux_losses(logits, experts)
        dropped = None
        if capacity > 0:
            C = max(1, math.ceil(capacity * k * N / E))
            onehot = F.one_hot(experts, E)
            rank = onehot.cumsum(0).gather(1, experts.unsqueeze(1)).squeeze(1)
            keep = rank <= C
            if not overflow_zero:
                dropped = torch.zeros(N, dtype=xf.dtype, device=xf.device).index_add(0, tokens, w * ~keep)
            experts = torch.where(keep, experts, torch.full_like(experts, -1))
            w = w * keep
        out = self._dispatch(xf, experts, tokens, w, None)
        if dropped is not None and out.shape[1] == xf.shape[1]:
            out = out + xf * dropped.unsqueeze(1)  # overflow passes the input through
        return out

    def _expert_choice(self, xf):
        N, E = xf.shape[0], self.router.num_experts
        logits = xf @ self.router.gate.weight.t()
        scores = torch.softmax(logits, -1).t()  # [E, N]
        c = min(N, max(1, math.ceil(self.router.capacity * N / E)))
        chosen, weights = _top(scores, c)  # [E, c]
        experts = torch.arange(E, device=xf.device).repeat_interleave(c)
        self.aux = self.router.aux_losses(logits, experts)
        return self._dispatch(xf, experts, chosen.reshape(-1), weights.reshape(-1), None)

    def _token_mix(self, x):
        r, n = self.router, self.router.group
        seq = r.axis == "sequence"
        flat = x.dim() == 2 and not seq  # a batch of single tokens mixes as [B, 1, d]
        inp = x.unsqueeze(1) if flat else x
        B, T, d = inp.shape
        L = T if seq else B
        Lp = math.ceil(L / n) * n
        if Lp != L:  # zero tokens pad the batch (or sequence) to a multiple of the group
            pad = inp.new_zeros((B, Lp - T, d) if seq else (Lp - B, T, d))
            inp = torch.cat([inp, pad], 1 if seq else 0)
        Bp, Tp = (B, Lp) if seq else (Lp, T)
        G = Lp // n
        X = inp.reshape(Bp * G, n, d) if seq else inp.reshape(G, n, Tp, d).permute(0, 2, 1, 3).reshape(G * Tp, n, d)
        M, E = X.shape[0], r.num_experts
        logits = X @ r.controller.weight.t()  # [M, group, E]
        if r.discrete:
            if r.emit == "softmax_experts":
                raise NotImplementedError("TokenMix(discrete=True, emit='softmax_experts')")
            pick = _top(logits.permute(0, 2, 1), 1)[0].reshape(M, E)  # each expert's token
            tokens = (torch.arange(M, device=x.device).unsqueeze(1) * n + pick).reshape(-1)
            experts = torch.arange(E, device=x.device).repeat(M)
            ones = torch.ones(M * E, dtype=x.dtype, device=x.device)
            y = self._dispatch(X.reshape(M * n, d), experts, tokens, ones, None)
            emitted = y.reshape(M, n, -1)
        else:
            scaled = logits / r.temperature if r.temperature != 1 else logits
            merge = torch.softmax(scaled.permute(0, 2, 1), -1)  # [M, E, group]
            mixed = merge @ X  # [M, E, d]: one mixed token per expert and group
            Y = torch.stack([expert(mixed[:, e]) for e, expert in enumerate(self.leaves)], 1)
            w = torch.softmax(scaled, -1) if r.emit == "softmax_experts" else merge.permute(0, 2, 1)
            emitted = w @ Y  # [M, group, dOut]
        dOut = emitted.shape[-1]
        if seq:
            y = emitted.reshape(Bp, Tp, dOut)[:, :T]
        else:
            y = emitted.reshape(G, Tp, n, dOut).permute(0, 2, 1, 3).reshape(Bp, Tp, dOut)[:B]
        return y.reshape(B, dOut) if flat else y

    def _dense(self, xf, w):
        """Weights w [N, E]: each expert runs on the rows with a non-zero weight."""
        N = xf.shape[0]
        rows, experts = w.nonzero(as_tuple=True)
        return self._dispatch(xf, experts, rows, w[rows, experts], None)
`;

"""Meta Networks (Munkhdalai & Yu, "Meta Networks", ICML 2017).

Two networks with the same layout (``blocks`` conv blocks, then fc1 and fc2) hold slow weights, learned across
tasks: the embedding u (slow Q) and the base learner b (slow W). Per task, two meta-learners turn loss gradients
into fast weights, shared across the coordinates of the weights (each coordinate is a batch element):

1. Task-level fast weights Q⁺ = d(G, {∇_Q L_emb}): the support set, split into ``task_steps`` chunks, gives one
   gradient of the embedding loss (cross-entropy of u's fc2 classifier) per chunk; d, an LSTM, reads them in turn
   and its last output is Q⁺.
2. Example-level fast weights W*_i = m(Z, ∇_W L_i) for every support example i, from the gradient of b's loss on
   that example alone; m is an MLP. The W*_i are the memory values, their keys r'_i = u(Q, Q⁺, x'_i).
3. A query x with key r = u(Q, Q⁺, x) attends to the memory, a_i = softmax_i cos(r'_i, r), reads
   W* = Σ_i a_i W*_i and is classified by b(W, W*, x).
4. The cross-entropy of the query predictions trains Q, W, G and Z together.

Fast weights enter by layer augmentation: a layer with slow weights W and fast weights W* computes
ReLU(W x) + ReLU(W* x) (its last, linear layer W x + W* x). The gradients given to d and m are inputs, detached
and preprocessed coordinate-wise as in the paper's code: (max(log(|g| + ε) / p, −1), clamp(e^p g, −1, 1)), p = 7.
Each of d and m has one network for the conv weights and one for the fully connected weights, as in that code;
the layers have no biases and no batch norm, and the keys are u's fc1 outputs before the ReLU.

The paper's attention is softmax_i cos(r'_i, r). A cosine lies in [−1, 1], so that attention is never sharp (in
5-way 1-shot the matching key gets at most e / (e + 4/e) ≈ 0.65), and b reads a blend of all the support examples'
fast weights. ``scale`` (s) and ``learn_scale`` give the softmax an inverse temperature, softmax_i s · cos(r'_i, r),
as Matching Networks' ``scale`` does here (matching.py); s = 1 is the paper's formula.

Two changes from that code, both to how d and m start:

- Their output layers start with N(0, 0.01²) weights, so that the first fast weights are a few hundredths, no larger
  than the slow ones. With the default initialisation they are of order 1 per coordinate, and five augmented
  conv layers multiply the activations by hundreds each: the first losses are enormous.
- Their output biases start at minus their output for a zero gradient, so that a zero gradient gives a zero fast
  weight. Most coordinates' gradients are tiny and preprocess to about (−1, 0), so otherwise nearly all fast weights
  of a layer start at one value; where it is negative, ReLU(W* x) of the non-negative inputs is zero everywhere, no
  gradient reaches the network that made them, and it never learns (m's network for the conv weights can get
  exactly zero gradient through a whole training run).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from lightning_meta import speedups
from lightning_meta.algorithms import coordinatewise
from lightning_meta.algorithms.base import MetaLearner, attention_scale, fixed_output_task, register
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError
from lightning_meta.precision import autocast_off

Params = dict[str, Tensor]
INIT_STD = 0.01  # of the output weights of d and m
GROUPS = ("conv", "fc")  # each meta-learner has one network for the conv weights and one for the fc weights


def preprocess(g: Tensor, p: float = 7.0) -> Tensor:
    """Gradients [...] -> [..., 2]: (max(log(|g| + ε) / p, −1), clamp(e^p g, −1, 1))."""
    log = (g.abs() + torch.finfo(g.dtype).eps).log().div(p).clamp(min=-1)
    return torch.stack([log, (g * math.exp(p)).clamp(-1, 1)], dim=-1)


class FastWeightNet(nn.Module):
    """``blocks`` × (conv 3x3 without bias, ReLU, 2x2 max-pool), then fc1 and fc2, without biases; called with
    explicit weights so that fast weights can be added to any layer.

    The weights start N(0, gain² / fan_in) with ``init="lecun"``, gain 1: Chainer's default, which the paper's code
    used. ``"he"`` takes gain √2 for the layers before a ReLU (1 for fc2), so that the activations keep their scale
    through the blocks. ``"torch"`` is PyTorch's default, U(±1 / √fan_in), under which each block about halves
    them."""

    def __init__(self, image_shape: tuple[int, ...], hidden: int, blocks: int, n_out: int,
                 init: str = "lecun") -> None:
        super().__init__()
        channels = [image_shape[0]] + [hidden] * blocks
        self.weights = nn.ParameterDict({f"conv{i}": nn.Parameter(torch.zeros(b, a, 3, 3))
                                         for i, (a, b) in enumerate(zip(channels, channels[1:]))})
        self.groups = {"conv": [f"conv{i}" for i in range(blocks)], "fc": ["fc1", "fc2"]}
        with torch.no_grad():
            features = self.features(dict(self.weights), torch.zeros(1, *image_shape)).shape[1]
        self.weights["fc1"] = nn.Parameter(torch.zeros(hidden, features))
        self.weights["fc2"] = nn.Parameter(torch.zeros(n_out, hidden))
        for name, w in self.weights.items():
            if init == "torch":
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Conv2d's and nn.Linear's default
            else:
                gain = math.sqrt(2) if init == "he" and name != "fc2" else 1.0
                nn.init.normal_(w, std=gain / math.sqrt(w[0].numel()))  # w[0]: the weights into one unit, fan_in

    def unflatten(self, flat: dict[str, Tensor]) -> Params:
        """Weights from their groups flattened: per group [B, P] -> {name: [B, *w]}, in the slow weights' dtype (fast
        weights generated under autocast are bfloat16, and under vmap autocast does not cast the operands of the
        convolutions that use them: pytorch/pytorch#192617)."""
        out = {}
        for group, names in self.groups.items():
            sizes = [self.weights[k].numel() for k in names]
            for k, v in zip(names, flat[group].split(sizes, dim=-1)):
                out[k] = v.reshape(*v.shape[:-1], *self.weights[k].shape).to(self.weights[k].dtype)
        return out

    def features(self, W: Params, x: Tensor, fast: Params | None = None) -> Tensor:  # [B, *x] -> [B, F]
        h = x
        for name in self.groups["conv"]:
            out = F.relu(F.conv2d(h, W[name], padding=1))
            if fast is not None:
                out = out + F.relu(F.conv2d(h, fast[name], padding=1))  # layer augmentation
            h = F.max_pool2d(out, 2, ceil_mode=True)
        return h.flatten(1)

    def fc1(self, W: Params, h: Tensor, fast: Params | None = None) -> Tensor:
        """fc1 before the ReLU (the keys of the embedding): W h + W* h."""
        out = h @ W["fc1"].T
        return out if fast is None else out + h @ fast["fc1"].T

    def logits(self, W: Params, x: Tensor, fast: Params | None = None) -> Tensor:  # [B, *x] -> [B, n_out]
        h = self.features(W, x, fast)
        a = F.relu(h @ W["fc1"].T)
        if fast is not None:
            a = a + F.relu(h @ fast["fc1"].T)
        out = a @ W["fc2"].T
        return out if fast is None else out + a @ fast["fc2"].T


class WeightGenerator(nn.Module):
    """A meta-learner: for each parameter group (``conv``, ``fc``) a small network applied to every coordinate's
    preprocessed gradient. ``recurrent``: an LSTM that reads a sequence of gradients (d); else an MLP (m). Their
    parameters live in ``nn.LSTMCell``, ``nn.Linear`` and ``nn.Sequential``, which compute them on every coordinate;
    the speed-up (``lightning_meta.speedups``) runs them through ``coordinatewise``, which computes the same
    functions over ~150,000 coordinates at a time (the LSTM in chunks with a hand-written backward pass, the MLP by
    pieces along the lines its inputs lie on)."""

    def __init__(self, hidden: int, recurrent: bool, steps: int = 1) -> None:
        super().__init__()
        self.recurrent = recurrent
        if recurrent:
            self.cells = nn.ModuleDict({g: nn.LSTMCell(2, hidden) for g in GROUPS})
            self.heads = nn.ModuleDict({g: nn.Linear(hidden, 1) for g in GROUPS})
        else:
            self.mlps = nn.ModuleDict({g: nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                                        nn.ReLU(), nn.Linear(hidden, 1)) for g in GROUPS})
        for group in GROUPS:  # small fast weights at first, zero for a zero gradient (see the module docstring)
            out = self.output(group)
            nn.init.normal_(out.weight, std=INIT_STD)
            nn.init.zeros_(out.bias)
            with torch.no_grad():  # the LSTM's output after ``steps`` zero gradients, the MLP's for one
                out.bias -= self(group, torch.zeros(steps, 1, 1) if recurrent else torch.zeros(1)).flatten()

    def output(self, group: str) -> nn.Linear:
        return self.heads[group] if self.recurrent else self.mlps[group][-1]

    def forward(self, group: str, g: Tensor) -> Tensor:
        """Fast weights from gradients of one group: MLP [..., P] -> [..., P]; LSTM [S, B, P] (S gradients in
        turn) -> [B, P], its output after the last."""
        x = preprocess(g.detach())  # [..., P, 2]
        if not speedups.enabled():
            with autocast_off(x.device.type):  # in the networks' own dtype, as coordinatewise does
                x = x.to(self.output(group).weight.dtype)
                if not self.recurrent:
                    return self.mlps[group](x)[..., 0].to(g.dtype)  # m on every coordinate
                state = None  # (h, c) [B * P, H], zero at first
                for x_s in x:  # d reads the S gradients in turn: [B, P, 2] each
                    state = self.cells[group](x_s.reshape(-1, 2), state)
                return self.heads[group](state[0]).view(x.shape[1:-1]).to(g.dtype)
        return self.coordinatewise(group, x).to(g.dtype)

    def coordinatewise(self, group: str, x: Tensor) -> Tensor:
        """The same networks on features x [..., P, 2] through ``coordinatewise``, in float32 (the speed-up)."""
        if not self.recurrent:
            return coordinatewise.mlp(self.mlps[group], x.view(-1, 2)).view(x.shape[:-1])
        S, B, P, _ = x.shape
        return coordinatewise.lstm(self.cells[group], self.heads[group], x.view(S, B * P, 2)).view(B, P)


@register
class MetaNet(MetaLearner):
    """Meta Networks.

    Args:
        image_shape: input shape, e.g. (1, 28, 28).
        n_way: the outputs of b and of u's classifier, one per class: the most classes an episode may have. An N-way
            episode uses the first N (so training may have more classes per episode than testing).
        hidden: filters of the conv blocks and units of fc1 (the paper: 64).
        blocks: conv blocks of u and b (the paper's code: 5 on Omniglot).
        meta_hidden: units of the meta-learners d and m (the paper: 20).
        task_steps: the gradients d reads, one per chunk of the support set (the paper's code: 5); chunk c holds
            support examples c, c + S, c + 2S, ...
        task_fast_weights: false drops Q⁺ and d, the paper's ablation "MetaNet-": the keys are u(Q, x).
        scale: s, the inverse temperature of the memory attention a_i = softmax_i s · cos(r'_i, r) (1: the paper's).
        learn_scale: learn s, starting from ``scale``.
        init: how the slow weights of u and b start: ``"lecun"`` (the paper's code), ``"he"`` or ``"torch"``, see
            :class:`FastWeightNet`.
        **kwargs: optimiser settings, see :class:`MetaLearner`.
    """

    name = "metanet"
    adapts_at_evaluation = True  # its fast weights come from loss gradients on the support set

    def __init__(self, image_shape: tuple[int, ...], n_way: int, hidden: int = 64, blocks: int = 5,
                 meta_hidden: int = 20, task_steps: int = 5, task_fast_weights: bool = True, scale: float = 1.0,
                 learn_scale: bool = False, init: Literal["lecun", "he", "torch"] = "lecun",
                 **kwargs: Any) -> None:
        super().__init__(image_shape, **kwargs)
        if len(image_shape) != 3:
            raise ConfigError(f"MetaNet's networks are convolutional and need images (C, H, W), got {image_shape}")
        if n_way < 2 or min(hidden, blocks, meta_hidden, task_steps) < 1:
            raise ConfigError(f"model.n_way must be >= 2 and hidden, blocks, meta_hidden, task_steps >= 1 (got "
                              f"{n_way}, {hidden}, {blocks}, {meta_hidden}, {task_steps})")
        if init not in ("lecun", "he", "torch"):
            raise ConfigError(f"model.init must be 'lecun', 'he' or 'torch', got {init!r}")
        self.n_way, self.task_steps = n_way, task_steps
        self.u = FastWeightNet(image_shape, hidden, blocks, n_way, init)  # embedding, slow weights Q
        # u's output layer only scores the embedding loss, whose gradients reach d as detached inputs: nothing trains
        # it, and marking it so lets DDP, which expects a gradient for every trainable parameter, run MetaNet
        self.u.weights["fc2"].requires_grad_(False)
        self.b = FastWeightNet(image_shape, hidden, blocks, n_way, init)  # base learner, slow weights W
        self.d = (WeightGenerator(meta_hidden, recurrent=True, steps=task_steps)  # G: task-level fast weights Q⁺
                  if task_fast_weights else None)
        self.m = WeightGenerator(meta_hidden, recurrent=False)  # Z: example-level fast weights W*
        self.scale = attention_scale(scale, learn_scale)  # s of the attention

    def validate_setup(self, data: Any, inference_mode: bool, max_steps: int) -> None:
        super().validate_setup(data, inference_mode, max_steps)
        self.check_n_way(data, self.n_way, at_most=True)

    def check_task(self, shots: list[int]) -> None:
        super().check_task(shots)
        fixed_output_task(self, len(shots), self.n_way, at_most=True)

    @staticmethod
    def per_example_gradients(net: FastWeightNet, x: Tensor, y: Tensor, n_way: int) -> dict[str, Tensor]:
        """∇ of net's classifier loss (over its first ``n_way`` outputs) on each example alone, at its slow weights:
        x [T, M, *x], y [T, M] -> per group [T, M, P]."""
        W = {k: w.detach() for k, w in net.weights.items()}

        def loss(W: Params, x: Tensor, y: Tensor) -> Tensor:
            return F.cross_entropy(net.logits(W, x[None])[:, :n_way], y[None])

        g = vmap(grad(loss), in_dims=(None, 0, 0))(W, x.flatten(0, 1), y.flatten())  # {name: [T*M, *w]}
        return {group: torch.cat([g[k].reshape(*y.shape, -1) for k in names], dim=-1)
                for group, names in net.groups.items()}

    def task_fast_weights(self, support: Tensor, labels: Tensor, n_way: int) -> Params:
        """Q⁺ = d(G, {∇_Q L_emb}) for every task: {name: [T, *w]}."""
        NK = labels.shape[1]
        S = min(self.task_steps, NK)
        chunks = F.one_hot(torch.arange(NK, device=labels.device) % S, S).T.to(support.dtype)  # [S, NK]
        chunks = chunks / chunks.sum(1, keepdim=True)  # the mean loss of a chunk has the mean gradient
        g = self.per_example_gradients(self.u, support, labels, n_way)  # per group [T, NK, P]
        fast = {group: self.d(group, torch.einsum("sn,tnp->stp", chunks, g_group)) for group, g_group in g.items()}
        return self.u.unflatten(fast)

    def keys(self, x: Tensor, Q_plus: Params | None) -> Tensor:
        """u(Q, Q⁺, x): x [T, M, *x], Q⁺ {name: [T, *w]} (or None: u(Q, x)) -> [T, M, hidden]."""
        Q = dict(self.u.weights)
        if Q_plus is None:
            return self.u.fc1(Q, self.u.features(Q, x.flatten(0, 1))).unflatten(0, x.shape[:2])
        return vmap(lambda x, fast: self.u.fc1(Q, self.u.features(Q, x, fast), fast))(x, Q_plus)

    def attend(self, r_query: Tensor, r_support: Tensor) -> Tensor:
        """a_i = softmax_i s · cos(r'_i, r): [T, NQ, D], [T, NK, D] -> [T, NQ, NK]."""
        cosine = F.cosine_similarity(r_query[:, :, None], r_support[:, None], dim=-1)
        return torch.softmax(self.scale * cosine, dim=-1)

    def predict(self, episode: Episode) -> Tensor:
        NK = episode.support_labels.shape[1]
        # 1. task-level fast weights and the keys of support and query
        N = episode.n_way
        Q_plus = self.task_fast_weights(episode.support, episode.support_labels, N) if self.d is not None else None
        r = self.keys(torch.cat([episode.support, episode.query], dim=1), Q_plus)  # [T, NK+NQ, hidden]
        r_support, r_query = r[:, :NK], r[:, NK:]
        # 2. example-level fast weights W*_i, the memory values
        g = self.per_example_gradients(self.b, episode.support, episode.support_labels, N)
        memory = {group: self.m(group, g_group) for group, g_group in g.items()}  # per group [T, NK, P]
        # 3. each query reads its fast weights W* = Σ_i a_i W*_i and is classified by b(W, W*, x)
        a = self.attend(r_query, r_support)  # [T, NQ, NK]
        W_star = self.b.unflatten({group: (a @ values).flatten(0, 1) for group, values in memory.items()})
        W = dict(self.b.weights)
        logits = vmap(lambda x, fast: self.b.logits(W, x[None], fast)[0])(episode.query.flatten(0, 1), W_star)
        return logits[:, :N].unflatten(0, a.shape[:2])  # [T, NQ, N]

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        logits = self.predict(episode)  # 4. the query cross-entropy trains Q, W, G and Z
        return F.cross_entropy(logits.flatten(0, 1), episode.query_labels.flatten()), logits

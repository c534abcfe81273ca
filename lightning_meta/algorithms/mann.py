"""Memory-Augmented Neural Network with Least Recently Used Access (Santoro, Bartunov, Botvinick, Wierstra &
Lillicrap, "Meta-Learning with Memory-Augmented Neural Networks", ICML 2016).

An episode is shown as one sequence: its examples (support and query sets together, N classes with K + Q
examples each) in random order, where step t presents x_t with the one-hot label y_{t−1} of the step before (a
null label at t = 1). The network has to store x_t and bind it to its label when that arrives a step later.
Classes get new labels in every episode (the sampler's class-to-label assignment is random), so nothing but the
memory can carry the binding. The controller is an LSTM; the external memory M (rows × width) is read by H heads:

    k_t = tanh(W_k h_t)                                   a key per head
    w^w_t = σ(α) w^r_{t−1} + (1 − σ(α)) w^lu_{t−1}        LRUA write weights, α a learned gate per head
    M_t = M_{t−1} (least-used row of w^u_{t−1} set to 0) + Σ_heads w^w_t a_t^T,   a_t = k_t (the paper)
    w^r_t(i) = softmax_i cos(k_t, M_t(i)),  r_t = Σ_i w^r_t(i) M_t(i)
    w^u_t = γ w^u_{t−1} + Σ_heads (w^r_t + w^w_t)
    w^lu_t(i) = 1 if w^u_t(i) is among the H smallest usages, else 0
    p(y_t | ...) = softmax(W_o [h_t, r_t])

and the loss is the cross-entropy at every step. The controller reads [x_t, y_{t−1}, r_{t−1}] (the reads feed
back, as in the Neural Turing Machine the paper builds on). Memory and controller start from the same state in
every episode. With ``memory: false`` the same controller alone is the paper's LSTM baseline.

The paper writes the key itself, a_t = k_t, so one vector has to both find x_t's class in memory and carry the
label that arrives with x_t (y_{t−1}, for the example before). ``add_vector: true`` writes a separate
a_t = tanh(W_a h_t), the add vector of the Neural Turing Machine, as the public re-implementations do
(tristandeleu/ntm-one-shot, snowkylin/ntm). On Omniglot it learns the binding faster (docs/algorithms.md, MANN).

Validation and test score the sequences as training shows them (``evaluated_on_training_task``), by instance:
``acc_instance_n`` is the accuracy on the n-th example of a class in the sequence, i.e. after n − 1 labelled
examples of it (the paper's table: 1st, 2nd, 3rd, 5th, 10th). ``acc`` is the accuracy at instance K + 1 with K the
episode's ``k_shot``: a prediction made with K labelled examples of the class seen, which is what N-way K-shot
accuracy measures for the other algorithms. ``predict``, for a user's queries whose labels are unknown, shows the
labelled support set as a sequence and classifies each query alone after it, as its (K + 1)-th instance.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_meta.algorithms.base import InstancePictures, MetaLearner, fixed_output_task, register
from lightning_meta.backbones import build_backbone
from lightning_meta.episode import Episode
from lightning_meta.errors import ConfigError


@dataclass
class EpisodeSequence:
    x: Tensor  # [T, L, *x]  the episode's examples in the order they are shown
    y: Tensor  # [T, L]      their labels
    instance: Tensor  # [T, L]  n for the n-th example of its class in the sequence
    n_way: int


def sequence_order(episode: Episode, length: int) -> Tensor:
    """[T, length] a random order of ``length`` examples for each task, drawn from that task's key."""
    order = [torch.randperm(length, generator=episode.generator(t, "sequence")) for t in range(len(episode.support))]
    return torch.stack(order).to(episode.support.device)


def in_order(x: Tensor, order: Tensor) -> Tensor:
    """The examples x [T, L, *x] of each task taken in ``order`` [T, L]."""
    return x.gather(1, order.view(*order.shape, *[1] * (x.dim() - 2)).expand_as(x))


def sequence_labels(episode: Episode) -> tuple[Tensor, Tensor, Tensor]:
    """The order [T, L] of each task's sequence (support and query examples, drawn from its key), the labels
    [T, L] in that order, and the instance [T, L] of each: n for the n-th example of its class in the sequence."""
    y = torch.cat([episode.support_labels, episode.query_labels], dim=1)  # [T, L]
    order = sequence_order(episode, y.shape[1])
    y = y.gather(1, order)
    return order, y, F.one_hot(y, episode.n_way).cumsum(1).gather(2, y[..., None])[..., 0]  # counts t itself too


def as_sequence(episode: Episode) -> EpisodeSequence:
    """Support and query examples of each task in a random order drawn from that task's key."""
    order, y, instance = sequence_labels(episode)
    x = torch.cat([episode.support, episode.query], dim=1)  # [T, L, *x]
    return EpisodeSequence(in_order(x, order), y, instance, episode.n_way)


@dataclass
class MemoryState:
    M: Tensor  # [T, R, W]  memory
    w_r: Tensor  # [T, H, R]  read weights of the last step
    w_u: Tensor  # [T, R]     usage
    w_lu: Tensor  # [T, R]    least-used weights


class LRUAMemory(nn.Module):
    """The external memory with Least Recently Used Access writes: ``rows`` × ``width``, ``heads`` heads, usage
    decay γ."""

    def __init__(self, rows: int, width: int, heads: int, gamma: float) -> None:
        super().__init__()
        self.rows, self.width, self.heads, self.gamma = rows, width, heads, gamma

    def initial_state(self, T: int, like: Tensor) -> MemoryState:
        """M_0 a small constant (so that cosines are defined), no reads, no usage; w^lu_0 from w^u_0 = 0."""
        w_u = like.new_zeros(T, self.rows)
        return MemoryState(M=like.new_full((T, self.rows, self.width), 1e-6),
                           w_r=like.new_zeros(T, self.heads, self.rows), w_u=w_u, w_lu=self.least_used(w_u))

    def least_used(self, w_u: Tensor) -> Tensor:  # [T, R] -> [T, R]: 1 at the H smallest usages
        smallest = w_u.argsort(dim=-1, stable=True)[:, : self.heads]
        return torch.zeros_like(w_u).scatter_(1, smallest, 1.0)

    def forward(self, k: Tensor, alpha: Tensor, s: MemoryState,
                beta: Tensor | None = None, a: Tensor | None = None) -> tuple[Tensor, MemoryState]:
        """One step: keys k [T, H, W], gates α [T, H], key strengths β [T, H] (None: 1) and add vectors a [T, H, W]
        (None: the keys are written) -> reads r_t [T, H, W] and the new state."""
        gate = torch.sigmoid(alpha)[..., None]  # σ(α) [T, H, 1]
        w_w = gate * s.w_r + (1 - gate) * s.w_lu[:, None]  # [T, H, R]
        keep = 1 - F.one_hot(s.w_u.argmin(dim=-1), self.rows).to(s.M)  # the least-used row of w^u_{t−1} is zeroed
        M = s.M * keep[..., None] + w_w.transpose(1, 2) @ (k if a is None else a)  # [T, R, W]
        similarity = F.normalize(k, dim=-1, eps=1e-8) @ F.normalize(M, dim=-1, eps=1e-8).transpose(1, 2)  # [T, H, R]
        w_r = torch.softmax(similarity if beta is None else beta[..., None] * similarity, dim=-1)
        r = w_r @ M  # [T, H, W]
        w_u = self.gamma * s.w_u + w_r.sum(1) + w_w.sum(1)  # [T, R]
        return r, MemoryState(M, w_r, w_u, self.least_used(w_u))


class Controller(nn.LSTMCell):
    """The LSTM controller: ``nn.LSTMCell`` (its parameters, initialisation and equations) on the input
    [u_t, r_{t−1}], where u_t = [x_t, y_{t−1}] is known for the whole sequence in advance and only the reads r_{t−1}
    come from the recurrence. W_u u_t + b is therefore one matrix product over all steps (``project``), and a
    step (``step``) adds W_r r_{t−1} + W_h h_{t−1}: the same numbers as the cell on the concatenated input, without
    a small product and a full-size weight gradient at every step."""

    def project(self, u: Tensor) -> Tensor:
        """W_u u_t + b_ih + b_hh for every step: [T, L, D + N] -> [T, L, 4C]."""
        W_u = self.weight_ih[:, : u.shape[-1]]
        return F.linear(u, W_u, self.bias_ih + self.bias_hh)

    def step(self, gates_u: Tensor, r: Tensor, state: tuple[Tensor, Tensor],
             W_rh: Tensor) -> tuple[Tensor, Tensor]:
        """One step from the projected input [T, 4C], the reads r_{t−1} [T, H*W], (h_{t−1}, c_{t−1}) and
        W_rh = [W_r, W_h] (``recurrent_weight``) -> (h_t, c_t)."""
        h, c = state
        i, f, g, o = (gates_u + torch.cat([r, h], dim=-1) @ W_rh.T).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def recurrent_weight(self, reads: int) -> Tensor:
        """[W_r, W_h]: [4C, H*W + C], built once a sequence so that its gradient is split once."""
        return torch.cat([self.weight_ih[:, self.input_size - reads:], self.weight_hh], dim=1)


def check_cpp_compiler() -> None:
    """``torch.compile`` builds its CPU kernels with the C++ compiler that $CXX names, else g++ (clang++ on macOS, cl
    on Windows): one clear line, before training, if that command is not on the PATH."""
    compiler = os.environ.get("CXX", {"darwin": "clang++", "win32": "cl"}.get(sys.platform, "g++"))
    command = [compiler] if sys.platform == "win32" else shlex.split(compiler)  # $CXX may carry flags
    if not command or shutil.which(command[0]) is None:
        raise ConfigError("model.compile_step: true needs a C++ compiler for torch.compile (g++, or the one $CXX "
                          "names); install one or set --model.compile_step false")


@register
class MANN(MetaLearner, InstancePictures):
    """MANN with LRUA memory (or, with ``memory: false``, the LSTM baseline).

    Args:
        image_shape: input shape, e.g. (1, 20, 20).
        n_way: N, the classes of an episode (the label inputs and outputs).
        encoder: the network that turns an example into the vector x_t: ``pixels`` (the paper: the flattened
            image) or any registered backbone that gives vectors (e.g. ``conv4``).
        hidden: units of the encoder, if it has any.
        controller: units of the LSTM controller (the paper: 200).
        memory: use the external memory (false: the LSTM baseline).
        memory_rows: R, memory locations (the paper: 128).
        memory_width: W, the size of a location (the paper: 40).
        heads: H, read heads; each also writes (the paper: 4).
        gamma: γ, the decay of the usage weights.
        key_strength: read with w^r_t(i) = softmax_i β_t cos(k_t, M_t(i)), β_t = softplus(W_β h_t) ≥ 0 per head, the
            key strength of the Neural Turing Machine's content addressing (the paper's equation has β = 1).
        add_vector: write a_t = tanh(W_a h_t) instead of the key (see the module docstring).
        compile_step: run each time step (controller, memory, output) through ``torch.compile`` (needs a C++
            compiler on a CPU; it compiles once for each batch shape): a step is a few hundred small operations,
            which the compiler fuses.
        **kwargs: optimiser settings, see :class:`MetaLearner`.
    """

    name = "mann"
    evaluated_on_training_task = True  # scored on the sequences of ``run``; ``predict`` serves unlabelled queries
    instances = (1, 2, 3, 5, 10)  # acc_instance_n reported: Santoro et al.'s table

    def __init__(self, image_shape: tuple[int, ...], n_way: int, encoder: str = "pixels", hidden: int = 64,
                 controller: int = 200, memory: bool = True, memory_rows: int = 128, memory_width: int = 40,
                 heads: int = 4, gamma: float = 0.95, key_strength: bool = False, add_vector: bool = False,
                 compile_step: bool = False, **kwargs: Any) -> None:
        super().__init__(image_shape, **kwargs)
        if n_way < 2 or min(controller, memory_rows, memory_width, heads) < 1 or heads > memory_rows:
            raise ConfigError(f"model.n_way must be >= 2, controller, memory_rows, memory_width and heads >= 1, and "
                              f"heads <= memory_rows (got {n_way}, {controller}, {memory_rows}, {memory_width}, "
                              f"{heads})")
        if not 0 <= gamma <= 1:
            raise ConfigError(f"model.gamma, the usage decay, must be in [0, 1] (got {gamma})")
        if compile_step:
            check_cpp_compiler()
        self.encoder = build_backbone(encoder, image_shape, hidden=hidden)
        with torch.no_grad():
            x_dim = self.encoder.eval()(torch.zeros(1, *image_shape)).shape[1:]
        self.encoder.train()
        if len(x_dim) != 1:
            raise ConfigError(f"MANN needs an encoder that gives vectors, but {encoder!r} gives {tuple(x_dim)}")
        reads = heads * memory_width if memory else 0
        self.memory = LRUAMemory(memory_rows, memory_width, heads, gamma) if memory else None
        self.lstm = Controller(x_dim[0] + n_way + reads, controller)
        self.key = nn.Linear(controller, heads * memory_width) if memory else None  # W_k
        self.alpha = nn.Linear(controller, heads) if memory else None  # the write gates α
        self.beta = nn.Linear(controller, heads) if memory and key_strength else None  # key strengths β
        self.add = nn.Linear(controller, heads * memory_width) if memory and add_vector else None  # W_a
        self.output = nn.Linear(controller + reads, n_way)  # W_o
        self.n_way, self.reads = n_way, reads
        self.step_fn = torch.compile(self.time_step, dynamic=False) if compile_step else self.time_step

    def validate_setup(self, data: Any, inference_mode: bool, max_steps: int) -> None:
        super().validate_setup(data, inference_mode, max_steps)
        self.check_n_way(data, self.n_way)

    def check_task(self, shots: list[int]) -> None:
        super().check_task(shots)
        fixed_output_task(self, len(shots), self.n_way)

    def forward(self, seq: EpisodeSequence) -> Tensor:
        """Logits [T, L, N] of every step of the sequences."""
        if seq.n_way != self.n_way:
            raise ConfigError(f"the model has {self.n_way} label units but the episodes are {seq.n_way}-way; "
                              f"set model.n_way to data.n_way (and data.eval_n_way to it)")
        T, L = seq.y.shape
        x = self.encoder(seq.x.flatten(0, 1)).unflatten(0, (T, L))  # [T, L, D]
        y_prev = F.pad(F.one_hot(seq.y[:, :-1], self.n_way).to(x), (0, 0, 1, 0))  # y_{t−1}, 0 at t = 1: [T, L, N]
        gates_u = self.lstm.project(torch.cat([x, y_prev], dim=-1))  # [T, L, 4C]: the input part of every step
        W_rh = self.lstm.recurrent_weight(self.reads)
        h = c = x.new_zeros(T, self.lstm.hidden_size)
        r = x.new_zeros(T, self.reads)  # r_0 = 0 ([T, 0] without memory)
        memory = self.memory.initial_state(T, x) if self.memory is not None else None
        logits = []
        for gates_u_t in gates_u.unbind(1):
            logits_t, h, c, r, memory = self.step_fn(gates_u_t, W_rh, h, c, r, memory)
            logits.append(logits_t)
        return torch.stack(logits, dim=1)

    def time_step(self, gates_u_t: Tensor, W_rh: Tensor, h: Tensor, c: Tensor, r: Tensor,
                  memory: MemoryState | None) -> tuple[Tensor, Tensor, Tensor, Tensor, MemoryState | None]:
        """Step t: controller, then memory, then output -> (logits_t [T, N], h_t, c_t, r_t, memory state)."""
        h, c = self.lstm.step(gates_u_t, r, (h, c), W_rh)
        if memory is not None:
            k = torch.tanh(self.key(h)).unflatten(1, (self.memory.heads, self.memory.width))  # [T, H, W]
            beta = F.softplus(self.beta(h)) if self.beta is not None else None  # β ≥ 0 [T, H]
            a = torch.tanh(self.add(h)).view_as(k) if self.add is not None else None  # a_t [T, H, W]
            reads, memory = self.memory(k, self.alpha(h), memory, beta, a)
            r = reads.flatten(1)  # [T, H*W]
        return self.output(torch.cat([h, r], dim=-1)), h, c, r, memory

    def run(self, episode: Episode) -> tuple[EpisodeSequence, Tensor]:
        """The episode as sequences, and their logits. The order of each task is drawn from its key: training
        episodes never repeat, and each evaluation episode has the same order at every evaluation."""
        seq = as_sequence(episode)
        return seq, self.forward(seq)

    def meta_loss(self, episode: Episode) -> tuple[Tensor, Tensor]:
        """Cross-entropy at every step, and the logits [T, L, N] of the sequences."""
        seq, logits = self.run(episode)
        return self.sequence_loss(logits, seq), logits

    @staticmethod
    def sequence_loss(logits: Tensor, seq: EpisodeSequence) -> Tensor:
        return F.cross_entropy(logits.flatten(0, 1), seq.y.flatten())

    def predict(self, episode: Episode) -> Tensor:
        """Query scores [T, NQ, N] with no query label shown: each query is classified on its own, at the end of
        the support set shown as a labelled sequence (in an order drawn from the task's key), so it is the
        (K + 1)-th instance of its class, as ``acc`` counts. Training and evaluation use ``run``."""
        T, NK = episode.support_labels.shape
        NQ = episode.query.shape[1]
        order = sequence_order(episode, NK)  # [T, NK]
        support, labels = in_order(episode.support, order), episode.support_labels.gather(1, order)  # as shown
        x = torch.cat([support[:, None].expand(T, NQ, *support.shape[1:]), episode.query[:, :, None]], dim=2)
        y = torch.cat([labels[:, None].expand(T, NQ, NK), labels.new_zeros(T, NQ, 1)], dim=2)  # the query's is unused
        seq = EpisodeSequence(x.flatten(0, 1), y.flatten(0, 1), y.new_zeros(T * NQ, NK + 1), episode.n_way)
        return self.forward(seq)[:, -1].unflatten(0, (T, NQ))  # the prediction at each query's step

    def episode_scores(self, episode: Episode, outputs: Tensor) -> dict[str, Tensor]:
        """From the logits [T, L, N] of ``run``'s sequences: ``acc``, the accuracy at instance K + 1, and
        ``acc_instance_n`` for every n of ``instances`` that the sequences reach (each class is shown K + Q times)."""
        _, y, instance = sequence_labels(episode)  # those of ``run``'s sequences, without gathering the examples again
        shown = y.shape[1] // episode.n_way  # K + Q
        scores = {self.metric_name: self.instance_accuracy(outputs, y, instance, self.k_shot(episode) + 1)}
        scores.update({f"acc_instance_{n}": self.instance_accuracy(outputs, y, instance, n) for n in self.instances
                       if n <= shown})
        return scores

    @staticmethod
    def instance_accuracy(logits: Tensor, y: Tensor, instance: Tensor, n: int) -> Tensor:
        """Accuracy (%) of each task [T] on the n-th instances of its classes (NaN where there are none), from the
        sequences' logits [T, L, N], labels [T, L] and instances [T, L]."""
        at_n = (instance == n).float()
        correct = (logits.argmax(-1) == y).float()
        return 100 * (correct * at_n).sum(1) / at_n.sum(1)

    @staticmethod
    def k_shot(episode: Episode) -> int:
        return episode.support.shape[1] // episode.n_way

"""AttentionDecoder: an embedding, a RecurrentCore, soft attention over a memory, and a deep output layer.

It does not know whether its memory came from pixels (an image grid) or from words (an encoded
sentence). Per word step only the attention and the recurrence run; the embedding, its input
projection, the attention keys and the output layer are each one large matrix product outside the
step loop (docs/speed.md, "Where the time went").
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captioner.decoding import SUMMED, Generation, Norm, Rules, beam_search, greedy
from captioner.models.attention import AdditiveAttention
from captioner.models.core import RecurrentCore, State
from captioner.models.linear import Linear, SummedWeightGrad, linear, uses_onednn
from captioner.models.word_groups import WordGroups


@dataclass
class AttendedMemory:
    """What the decoder reads at every step, prepared once: memory (B, P, D), keys (B, P, A), mask (B, P),
    and the core's input weight for the context (G * H, D) and for the word (G * H, E), taken out of the
    (G * H, E + D) matrix (and cast, under autocast) once rather than at every step, where the copy and its
    gradient's scatter would cost more than the product.

    A state of B * K rows reads it too (beam search): rows b*K .. b*K+K-1 attend over memory row b.
    """

    memory: Tensor
    keys: Tensor
    mask: Tensor | None
    context_weight: Tensor
    embed_weight: Tensor  # the core's input weight for the word embedding (G * H, E), taken out once as well
    summed: SummedWeightGrad | None = None  # teacher forcing: the context weight's gradient in one product
    # class words: the classes' log-probabilities (B, C) over the whole picture (the memory's mean, what the
    # classifier was trained on), the same at every step
    whole_classes: Tensor | None = None
    # class words: the part of every memory row (P, D) they do not read (the image encoder's position embedding),
    # taken off the attended context: the classifier reads the backbone's features as it was trained on them
    class_offset: Tensor | None = None
    decoding: bool = False  # free-running steps without gradients (no dropout before the output layer)
    # decoding, where the product does not go through oneDNN (models/linear.py): the output layer's weight
    # transposed, (H, V) contiguous, for MKL faster than x W^T over the stored (V, H) weight (docs/speed.md)
    classifier_t: Tensor | None = None

    def narrow(self, keep: Tensor) -> AttendedMemory:
        """The same for the memory rows keep (beam search drops the pictures that are done)."""
        return replace(
            self,
            memory=self.memory[keep],
            keys=self.keys[keep],
            mask=None if self.mask is None else self.mask[keep],
            whole_classes=None if self.whole_classes is None else self.whole_classes[keep],
        )


def _cast_once(weight: Tensor) -> Tensor:
    """A weight read at every step, cast to the autocast dtype once (autocast would cast it at every step)."""
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return weight.to(torch.get_autocast_dtype(device))
    return weight


class AttentionDecoder(WordGroups, nn.Module):
    """Show, Attend and Tell decoder: gated soft attention, LSTM/GRU/RNN core, deep output layer; optionally
    visual words or class words (word_groups.py)."""

    def __init__(
        self,
        vocab_size: int,
        memory_dim: int,
        embed_dim: int = 512,
        hidden_dim: int = 512,
        attention_dim: int = 512,
        num_layers: int = 1,
        cell: str = "lstm",
        dropout: float = 0.5,
        word_dropout: float = 0.0,
        output_word: bool = True,
        visual_word_groups: int = 0,
        visual_streams: tuple[int, ...] | None = None,
        num_classes: int = 0,
        class_input: str = "shared",
        pad_id: int = 0,
        unk_id: int = 3,
        grid_memory: bool = False,
    ):
        """grid_memory: the memory is an image grid, the same P positions in every batch (models/linear.py)."""
        super().__init__()
        self.grid_memory = grid_memory
        self.vocab_size, self.memory_dim, self.embed_dim = vocab_size, memory_dim, embed_dim
        self.hidden_dim, self.num_layers, self.cell = hidden_dim, num_layers, cell
        self.word_dropout, self.output_word, self.pad_id, self.unk_id = word_dropout, output_word, pad_id, unk_id
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.attention = AdditiveAttention(memory_dim, hidden_dim, attention_dim)
        self.core = RecurrentCore(embed_dim + memory_dim, hidden_dim, num_layers, cell, dropout)
        # Initial state from the mean of the memory (Xu et al. 2015, section 3.1.2), one per layer: h, and c
        # for a cell that carries one (the LSTM)
        self.init_h = Linear(memory_dim, num_layers * hidden_dim)
        self.init_c = Linear(memory_dim, num_layers * hidden_dim) if self.core.num_states > 1 else None
        # Gating scalar beta = sigmoid(f_beta(h_{t-1})) scales the context (section 4.2.1).
        self.gate = Linear(hidden_dim, 1)
        self._add_deep_output(dropout)
        self._add_visual_words(visual_word_groups, visual_streams)
        # For every word, the share of the training sequences holding it that end with it: what decoding's
        # end rule reads (Rules.can_end). A buffer, so it travels in checkpoints; 1 until set_end_shares.
        self.register_buffer("end_share", torch.ones(vocab_size))
        self._add_class_words(num_classes, class_input, visual_word_groups)
        self._compiled = False  # compile_step: the compiled step keeps the per-step weight gradients

    def _add_deep_output(self, dropout: float) -> None:
        """Deep output (eq. 7): logits = L_o(E y_{t-1} + L_h h_t + L_z z_t); output_word=False drops E y_{t-1}."""
        self.out_hidden = Linear(self.hidden_dim, self.embed_dim)
        self.out_context = Linear(self.memory_dim, self.embed_dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.classifier = Linear(self.embed_dim, self.vocab_size)

    def embed(self, tokens: Tensor) -> Tensor:
        """The embeddings (..., E) of tokens (...): with class_input shared, every class word's is the slot's."""
        embedded = self.embedding(tokens)
        if self.class_embedding is None:
            return embedded
        return torch.where(self.class_group[tokens].unsqueeze(-1), self.class_embedding.to(embedded.dtype), embedded)

    def set_end_shares(self, shares: Tensor) -> None:
        """(V,): for each word, the share of the training sequences holding it that end with it."""
        if shares.shape != self.end_share.shape or not bool((shares > 0).any()):
            raise ValueError(f"end shares must be ({self.vocab_size},) with at least one word that ends a sequence")
        self.end_share.copy_(shares)

    def compile_step(self) -> None:
        """torch.compile the sequential part of a step (attention, gate, core): one fused kernel set per step
        in place of a dozen small ones. The weights and checkpoints are unchanged."""
        self._recur = torch.compile(self._recur)
        self._compiled = True

    def prepare(
        self, memory: Tensor, mask: Tensor | None = None, decoding: bool = False, class_offset: Tensor | None = None
    ) -> AttendedMemory:
        """Project the attention keys once per memory. memory (B, P, D), mask (B, P) True where valid.
        decoding: for free-running steps without gradients (no dropout; for MKL's products the output layer's
        weight transposed once).
        class_offset (P, D): what the class words do not read of each memory row (see AttendedMemory)."""
        if self.class_group is None:
            whole_classes = class_offset = None
        else:  # class words: the whole picture's classes, once per memory rather than at every step
            whole_classes = self._whole_classes(memory if class_offset is None else memory - class_offset, mask)
        keys = self.attention.project_memory(memory, few_shapes=self.grid_memory)
        return self.attended(memory, keys, mask, whole_classes, class_offset, decoding)

    def attended(
        self,
        memory: Tensor,
        keys: Tensor,
        mask: Tensor | None,
        whole_classes: Tensor | None,
        class_offset: Tensor | None,
        decoding: bool = False,
    ) -> AttendedMemory:
        """What the steps read, from a memory's keys and classes already computed (prepare, or the inputs of an
        exported step): the weights each step uses, sliced and cast once."""
        embed_weight, context_weight = (_cast_once(part) for part in self.core.split_input_weight(self.embed_dim))
        attended = AttendedMemory(
            memory,
            keys,
            mask,
            context_weight,
            embed_weight,
            whole_classes=whole_classes,
            class_offset=class_offset,
            decoding=decoding,
        )
        if decoding and not uses_onednn(memory, self.classifier.weight):
            attended.classifier_t = _cast_once(self.classifier.weight.t()).contiguous()
        return attended

    def init_state(self, memory: Tensor, mask: Tensor | None = None) -> State:
        """Initial (h, c) (or (h,)) from the mean of the valid memory positions; each (B, L, H)."""
        if mask is None:
            mean = memory.mean(dim=1)
        else:
            weights = mask.unsqueeze(-1).to(memory.dtype)  # (B, P, 1)
            mean = (memory * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        B = memory.size(0)
        h = torch.tanh(self.init_h(mean)).view(B, self.num_layers, self.hidden_dim)
        if self.init_c is None:
            return (h,)
        return h, torch.tanh(self.init_c(mean)).view(B, self.num_layers, self.hidden_dim)

    def _recur(
        self, embed_gates: Tensor, state: State, attended: AttendedMemory
    ) -> tuple[Tensor, Tensor, Tensor, State]:
        """The sequential part of one step: attend with h_{t-1}, gate, run the core.

        embed_gates (B, G * H) is the core's projection of the word embedding. Returns h_t (B, H),
        the context (B, D), the gated context z_t = beta * context (B, D), alpha_t (B, P), the new state.
        """
        query = state[0][:, -1]  # top layer's h_{t-1}: (B, H)
        context, alpha = self.attention(attended.keys, attended.memory, query, attended.mask)
        gated = torch.sigmoid(self.gate(query, few_shapes=True)) * context  # (B, D)
        if attended.summed is not None:
            gates = embed_gates + attended.summed.linear(gated, attended.context_weight)
        else:
            gates = embed_gates + linear(gated, attended.context_weight, few_shapes=True)
        hidden, state = self.core.step_projected(gates, state)
        return hidden, context, gated, alpha, state

    @staticmethod
    def _class_context(context: Tensor, alpha: Tensor, attended: AttendedMemory) -> Tensor:
        """The attended context (..., D) as the word groups read it: for class words without the part of the memory
        they do not read (AttendedMemory.class_offset), sum_p alpha_p (grid_p + offset_p) - sum_p alpha_p offset_p,
        in float32; alpha (..., P)."""
        if attended.class_offset is None:
            return context
        with torch.autocast(context.device.type, enabled=False):
            return context.float() - alpha.float() @ attended.class_offset.float()

    def _output(
        self,
        embedded: Tensor,
        hidden: Tensor,
        context: Tensor,
        gated: Tensor,
        whole_classes: Tensor | None = None,
        attended: AttendedMemory | None = None,
    ) -> Tensor:
        """Output layer over any leading shape: (..., E), (..., H), (..., D), (..., D) -> scores (..., V);
        with attended.decoding (free-running steps) over rows (N, ...) only.

        The word distribution is softmax(scores) in both modes: logits of the deep output, or, with
        visual words, log-probabilities already (log_softmax leaves those unchanged).
        """
        mixed = self.out_hidden(hidden) + self.out_context(gated)
        if self.output_word:
            mixed = mixed + embedded
        if attended is None or not attended.decoding:
            logits = self.classifier(self.dropout(mixed))
        elif attended.classifier_t is None:  # decoding: no dropout
            logits = self.classifier(mixed)
        else:
            logits = torch.addmm(self.classifier.bias, mixed, attended.classifier_t)
        if self.class_group is not None:
            return self._class_scores(F.log_softmax(logits.float(), dim=-1), context, whole_classes)
        if self.visual_groups is None:
            return logits
        return self._visual_scores(F.log_softmax(logits.float(), dim=-1), context)

    def forward(
        self,
        memory: Tensor,
        tokens: Tensor,
        mask: Tensor | None = None,
        class_offset: Tensor | None = None,
        steps: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Teacher-forced decoding.

        memory (B, P, D); tokens (B, T) the input words (BOS w1 ... w_{T-1}); mask (B, P); class_offset (P, D)
        see prepare. Returns logits (B, T, V) predicting w1 ... w_T, and attention weights alphas (B, T, P).
        steps (B,): how many leading positions of each row the caller reads (its real words; None: all T; every
        row runs at least one). A row's later steps are not run: the step loop carries a batch that shrinks as
        rows end, longest first (as the loader orders them), and their logits and alphas are zeros, for no loss
        to read.
        """
        B, T = tokens.shape
        ends = [T] * B if steps is None or self._compiled else steps.clamp(1, T).tolist()  # every row runs a step
        order = None
        if any(a < b for a, b in itertools.pairwise(ends)):  # rows not yet longest first
            rows = sorted(range(B), key=lambda row: -ends[row])  # stable: equal lengths keep their order
            ends, order = [ends[row] for row in rows], torch.tensor(rows, device=memory.device)
            memory, tokens = memory[order], tokens[order]
            mask = None if mask is None else mask[order]
        attended = self.prepare(memory, mask, class_offset=class_offset)
        if torch.is_grad_enabled() and attended.context_weight.requires_grad and not self._compiled:
            attended.summed = SummedWeightGrad()
        state = self.init_state(memory, mask)
        if self.training and self.word_dropout > 0:
            # Word dropout (Bowman et al. 2016): hide previous words (never the first, BOS) behind UNK,
            # so the next word must come from the memory, not from a word-to-word prior.
            hide = torch.rand(tokens.shape, device=tokens.device) < self.word_dropout
            hide[:, 0] = False
            tokens = tokens.masked_fill(hide & (tokens != self.pad_id), self.unk_id)
        embedded = self.embed(tokens)  # (B, T, E)
        embed_gates = self.core.project_input(embedded, weight=attended.embed_weight)  # (B, T, G * H), one matmul
        live = [sum(end > t for end in ends) for t in range(T)]  # the rows step t runs
        hiddens, contexts, gateds, alphas = [], [], [], []
        running = attended  # the memory rows still running
        for t, rows in enumerate(live):
            if rows == 0:  # every row has ended
                break
            if rows < state[0].size(0):  # the rows that have ended leave the batch's end
                state, running = tuple(part[:rows] for part in state), running.narrow(slice(0, rows))
            hidden, context, gated, alpha, state = self._recur(embed_gates[:rows, t], state, running)
            hiddens.append(hidden)
            contexts.append(context)
            gateds.append(gated)
            alphas.append(alpha)
        if live[-1] < B:  # only the positions run go through the output layer
            logits, alpha_all = self._packed_output(embedded, hiddens, contexts, gateds, alphas, live, attended)
        else:
            hidden_all = torch.stack(hiddens, dim=1)  # (B, T, H)
            context_all, gated_all = torch.stack(contexts, dim=1), torch.stack(gateds, dim=1)  # (B, T, D)
            alpha_all = torch.stack(alphas, dim=1)  # (B, T, P)
            context_all = self._class_context(context_all, alpha_all, attended)  # all steps in one product
            logits = self._output(embedded, hidden_all, context_all, gated_all, attended.whole_classes)  # (B, T, V)
        if order is not None:
            back = torch.argsort(order)
            logits, alpha_all = logits[back], alpha_all[back]
        return logits, alpha_all

    def _packed_output(
        self,
        embedded: Tensor,
        hiddens: list[Tensor],
        contexts: list[Tensor],
        gateds: list[Tensor],
        alphas: list[Tensor],
        live: list[int],
        attended: AttendedMemory,
    ) -> tuple[Tensor, Tensor]:
        """The output layer over the positions run only (step t ran the first live[t] rows), in one product:
        logits (B, T, V) and alphas (B, T, P), zero where a row had ended."""
        (B, T), device = embedded.shape[:2], embedded.device
        ran = live[: len(hiddens)]
        rows = torch.cat([torch.arange(n, device=device) for n in ran])  # (N,), step by step
        times = torch.cat([torch.full((n,), t, device=device) for t, n in enumerate(ran)])
        hidden, context, gated, alpha = (torch.cat(parts) for parts in (hiddens, contexts, gateds, alphas))
        context = self._class_context(context, alpha, attended)
        # the rows' words and classes as slices, whose gradients add up in a fixed order (an index with repeated
        # rows would add them in the threads' order: not the same weights twice)
        words = torch.cat([embedded[:n, t] for t, n in enumerate(ran)])
        whole = attended.whole_classes
        whole = None if whole is None else torch.cat([whole[:n] for n in ran])
        scores = self._output(words, hidden, context, gated, whole)  # (N, V)
        logits = scores.new_zeros(B, T, scores.size(-1)).index_put_((rows, times), scores)  # in place: no copy
        return logits, alpha.new_zeros(B, T, alpha.size(-1)).index_put_((rows, times), alpha)

    @torch.no_grad()
    def decode(
        self,
        memory: Tensor,
        mask: Tensor | None,
        bos_id: int,
        eos_id: int,
        beam_size: int = 1,
        max_len: int = 30,
        norm: Norm = SUMMED,
        rules: Rules | None = None,
        n_best: int = 1,
        class_offset: Tensor | None = None,
    ) -> Generation:
        """Free-running decoding from a memory (B, P, D): greedy for beam_size 1, else batched beam search
        (decoding.beam_search: norm ranks hypotheses, rules constrain them, n_best of them per input);
        class_offset (P, D): see prepare.

        The traces of the result are the attention weights (len_i, P) of every emitted token.
        """
        attended = self.prepare(memory, mask, decoding=True, class_offset=class_offset)
        state = self.init_state(memory, mask)
        start = torch.full((memory.size(0),), bos_id, dtype=torch.long, device=memory.device)
        if beam_size > 1:  # K states per memory row; the memory itself is not copied
            state = tuple(s.repeat_interleave(beam_size, 0) for s in state)

        def step(tokens: Tensor, state: State):
            return self.step(tokens, state, attended)

        def narrow(keep: Tensor) -> None:  # the pictures still searched
            nonlocal attended
            attended = attended.narrow(keep)

        if beam_size > 1 or n_best > 1:
            return beam_search(step, state, start, beam_size, max_len, eos_id, norm, rules, n_best, narrow)
        return greedy(step, state, start, max_len, eos_id, rules)

    def step(self, tokens: Tensor, state: State, attended: AttendedMemory) -> tuple[Tensor, State, Tensor]:
        """One free-running step: previous words (B,) -> logits (B, V), new state, alpha (B, P)."""
        embedded = self.embed(tokens)  # (B, E)
        embed_gates = self.core.project_input(embedded, weight=attended.embed_weight)
        hidden, context, gated, alpha, state = self._recur(embed_gates, state, attended)
        context = self._class_context(context, alpha, attended)
        scores = self._output(embedded, hidden, context, gated, attended.whole_classes, attended)
        return scores, state, alpha

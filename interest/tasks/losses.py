"""Catalogue-sized softmax losses shared by the item-predicting tasks.

Both take user states (N, D) and an item embedding table (n_items, D) and score the
states against items by inner product, as the sequence and recommend models do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Rows of logits computed at a time by full_softmax_loss: 32 x a 12k catalogue is 1.5 MB,
# which stays in cache between the matmul, the softmax and the gradient matmuls. bfloat16
# products are fast enough that the per-chunk overhead shows: 128 rows measured best.
CHUNK = 32
CHUNK_BF16 = 128


class _FullSoftmax(torch.autograd.Function):
    """Cross-entropy of ``states @ weight.T`` that never holds the (N, n_items) logits.

    The loss is the last node of the graph, so its gradient is known in the forward
    pass: per chunk of rows, softmax - one_hot gives d(logits), and the two matmuls that
    follow give d(states) and d(weight). Backward only scales them by the incoming
    gradient. Measured on 2 CPU cores at 900 x 64 x 12101 it takes half the time of
    ``F.cross_entropy(states @ weight.T)``, whose log-softmax writes and re-reads the
    full logits several times.

    ``low`` (bfloat16 or None): the three products' operands in that type, the softmax
    and every sum in float32, as autocast would do; about half the time again where the
    hardware multiplies bfloat16 natively (measured 0.37 s against 0.81 s for 2048 states
    x 54,542 items on one core with AVX512-BF16).
    """

    @staticmethod
    def forward(ctx, states, weight, targets, chunk, low):
        n = states.shape[0]
        grad_states = torch.empty_like(states)
        grad_weight = torch.zeros_like(weight)
        total = states.new_zeros(())
        s_all, w = (states, weight) if low is None else (states.to(low), weight.to(low))
        for i in range(0, n, chunk):
            s, t = s_all[i:i + chunk], targets[i:i + chunk]
            rows = torch.arange(len(t), device=t.device)
            logits = (s @ w.t()).to(states.dtype)
            peak = logits.amax(1, keepdim=True)
            total -= (logits[rows, t] - peak.squeeze(1)).sum()
            # In place from here: exp(logits - peak) is both the softmax numerator and, summed,
            # the log-sum-exp; one pass of exp over the chunk instead of two.
            probs = logits.sub_(peak).exp_()
            z = probs.sum(1, keepdim=True)
            total += z.log().sum()
            probs.div_(z * n)
            probs[rows, t] -= 1.0 / n  # d(mean loss)/d(logits) = (softmax - one_hot) / n
            if low is None:
                grad_states[i:i + chunk] = probs @ w
                grad_weight.addmm_(probs.t(), s)
            else:
                probs = probs.to(low)
                grad_states[i:i + chunk] = probs @ w
                grad_weight += probs.t() @ s
        ctx.save_for_backward(grad_states, grad_weight)
        return total / n

    @staticmethod
    def backward(ctx, grad):
        grad_states, grad_weight = ctx.saved_tensors
        return grad_states * grad, grad_weight * grad, None, None, None


def full_softmax_loss(states: torch.Tensor, targets: torch.Tensor, item_weight: torch.Tensor,
                      chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of every state's target (0-based item index) over all items.

    Under ``torch.autocast`` (``train.precision=bf16``) the products run in the autocast
    type; the inputs and gradients stay float32."""
    if not torch.is_grad_enabled() or not (states.requires_grad or item_weight.requires_grad):
        return F.cross_entropy(states @ item_weight.t(), targets)
    device = states.device.type
    low = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    with torch.autocast(device, enabled=False):  # the function casts itself, and keeps its sums in float32
        # Autocast hands over bfloat16 states from the model's last layer: the loss is float32 or wider.
        return _FullSoftmax.apply(states.to(torch.promote_types(states.dtype, torch.float32)),
                                  item_weight.to(torch.promote_types(item_weight.dtype, torch.float32)), targets,
                                  chunk or (CHUNK if low is None else CHUNK_BF16), low)


def sampled_softmax_loss(states: torch.Tensor, targets: torch.Tensor, item_weight: torch.Tensor,
                         log_q: torch.Tensor, n_uniform: int) -> torch.Tensor:
    """Cross-entropy over in-batch targets plus uniform negatives, with log-q correction.

    ``targets`` (N,) item indices (0-based), ``log_q`` (n_items,) the log sampling
    probability of every item as an in-batch negative (its popularity): subtracting it
    keeps popular items from being over-penalised (Yi et al., 2019).
    """
    n_items = item_weight.shape[0]
    uniform = torch.randint(0, n_items, (n_uniform,), device=states.device)
    cand = torch.cat([targets, uniform])  # (N + U,)
    logits = states @ item_weight[cand].t()  # (N, N + U)
    correction = torch.cat([log_q[targets], torch.full((n_uniform,), -math.log(n_items), device=states.device)])
    logits = logits - correction
    # Another row's target equal to mine is not a negative.
    same = targets.unsqueeze(1) == cand.unsqueeze(0)
    same[torch.arange(len(targets)), torch.arange(len(targets))] = False
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(targets), device=states.device))

"""White-box token attacks on a CLIP text encoder: greedy coordinate gradient (GCG) and PEZ soft prompts.

    from safeclip.attacks.text import TokenBudget, adversarial_slots, gcg, pez
    slots = adversarial_slots(bundle.tokenizer, prompts, n_tokens=8)     # prompt + 8 free tokens
    result = gcg(bundle.text, slots, targets, TokenBudget(tokens=8, steps=50), banned=("nud",))
    result.embeddings      # (Q, D) the encoder's embeddings of the attacked prompts
    result.texts           # the attacked prompts, decoded

Both attacks move a prompt's embedding towards a target embedding (an unsafe image's, or the base encoder's
embedding of the unsafe caption) by choosing ``tokens`` adversarial tokens appended after the prompt (before
the end token); the prompt itself is kept. Loss per prompt (``loss=``, lower is better): by default
``1 - cos(text(prompt + adv), target)`` (as in MMA-Diffusion's ``textual_attack.py``); a model with its own geometry
passes its own (HySAC: the geodesic distance, :mod:`safeclip.attacks.geometry`).

- GCG (Zou et al. 2023, "Universal and Transferable Adversarial Attacks on Aligned Language Models"): the
  gradient of the loss w.r.t. the one-hot token matrix ranks, per adversarial position, the ``top_k`` tokens
  with the most negative gradient; ``candidates`` one-token swaps drawn from them are evaluated *exactly* (a
  forward pass each) and the best is kept when it lowers the loss. With ``candidates >= tokens * top_k`` every
  swap is evaluated (no sampling).
- PEZ (Wen et al., NeurIPS 2023, "Hard Prompts Made Easy"): soft embeddings P are projected to their nearest
  vocabulary tokens P' (cosine), the loss is taken at P' and its gradient applied to P (AdamW); the best
  projected prompt seen is kept.

Special tokens and tokens whose text contains a banned word (case-insensitive substring, as MMA-Diffusion bans
'nud') are never chosen. The text encoder's own forward runs (LoRA adapters and weight edits included): the
adversarial positions' token embeddings are replaced through a forward hook on its input embedding table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from safeclip.errors import ConfigError


@dataclass
class TokenBudget:
    """How much a token attack may change and search."""

    tokens: int = 8  # adversarial tokens appended to each prompt
    steps: int = 50  # optimisation steps
    top_k: int = 32  # GCG: candidate tokens per position
    candidates: int = 64  # GCG: one-token swaps evaluated exactly per prompt and step
    lr: float = 0.1  # PEZ: AdamW learning rate
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("tokens", "steps", "top_k", "candidates"):
            if getattr(self, name) < 1:
                raise ConfigError(f"token budget {name} must be at least 1, got {getattr(self, name)}")


@dataclass
class TokenSlots:
    """Prompts as token ids with free adversarial positions: ``input_ids (Q, L)``, ``attention_mask (Q, L)``,
    ``slots (Q, n)`` the positions of the adversarial tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    slots: torch.Tensor

    def with_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``input_ids`` with ``tokens (Q, n)`` written into the slots."""
        ids = self.input_ids.clone()
        ids.scatter_(1, self.slots, tokens.to(ids.device))
        return ids

    def repeat(self, times: int) -> TokenSlots:
        """Each prompt ``times`` times in a row (``Q * times`` rows)."""
        return TokenSlots(*(t.repeat_interleave(times, dim=0) for t in (self.input_ids, self.attention_mask, self.slots)))


@dataclass
class TokenAttackResult:
    tokens: torch.Tensor  # (Q, n) the adversarial token ids
    input_ids: torch.Tensor  # (Q, L) the attacked prompts' ids
    loss: torch.Tensor  # (Q,) final loss to the target (default 1 - cos; lower is better)
    embeddings: torch.Tensor  # (Q, D) the attacked prompts' embeddings (float32, CPU)
    texts: list[str]  # the attacked prompts, decoded
    history: list[float]  # mean loss after each step


def adversarial_slots(tokenizer, prompts: Sequence[str], n_tokens: int, *, max_length: int | None = None,
                      fill: int | None = None) -> TokenSlots:
    """``[bos] prompt adv_1 .. adv_n [eos] pad..`` per prompt (the prompt truncated to leave room), slots filled
    with ``fill`` (default: the token of ``"!"``, else the first ordinary token)."""
    max_length = max_length or tokenizer.model_max_length
    if n_tokens + 2 > max_length:
        raise ConfigError(f"{n_tokens} adversarial tokens do not fit in the encoder's {max_length} positions")
    if fill is None:
        fill = next(iter(allowed_tokens(tokenizer, ()).nonzero().flatten().tolist()))
    bodies = [tokenizer(p, add_special_tokens=False)["input_ids"][: max_length - 2 - n_tokens] for p in prompts]
    length = max(len(b) for b in bodies) + n_tokens + 2
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(prompts), length), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    slots = torch.empty(len(prompts), n_tokens, dtype=torch.long)
    for i, body in enumerate(bodies):
        row = [tokenizer.bos_token_id, *body, *([fill] * n_tokens), tokenizer.eos_token_id]
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        slots[i] = torch.arange(1 + len(body), 1 + len(body) + n_tokens)
    return TokenSlots(ids, mask, slots)


def allowed_tokens(tokenizer, banned: Sequence[str]) -> torch.Tensor:
    """``(V,)`` bool: tokens an attack may use (no special token, no token containing a banned word)."""
    vocab = tokenizer.get_vocab()
    allowed = torch.ones(len(tokenizer), dtype=torch.bool)
    allowed[list(tokenizer.all_special_ids)] = False
    words = [w.lower() for w in banned if w]
    for token, index in vocab.items():
        text = token.replace("</w>", "").lower()
        if not text.strip() or any(w in text for w in words):
            allowed[index] = False
    if not allowed.any():
        raise ConfigError("every token of the vocabulary is special or banned; ban fewer words")
    return allowed


@contextlib.contextmanager
def token_embeddings_at(text_model: torch.nn.Module, slots: torch.Tensor, embeds: torch.Tensor) -> Iterator[None]:
    """Inside, the text encoder's token embeddings at ``slots (B, n)`` are ``embeds (B, n, H)`` (differentiable)."""
    table = text_model.get_input_embeddings()
    rows = torch.arange(slots.shape[0], device=slots.device)[:, None].expand_as(slots)

    def replace(module, inputs, output):  # output (B, L, H)
        return output.index_put((rows.to(output.device), slots.to(output.device)), embeds.to(output.dtype))

    handle = table.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def cosine_loss(embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(B,)`` 1 - cos between ``embeddings (B, D)`` and ``targets (B, D)``: what the token attacks minimise by default."""
    return 1 - F.cosine_similarity(embeddings.float(), targets.float().to(embeddings.device), dim=-1)


PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, D) embeddings, (B, D) targets -> (B,), lower = closer


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def encode_ids(text_model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
               batch_size: int = 512) -> torch.Tensor:
    """``(B, D)`` float32 projected embeddings of token ids (no gradient), in batches."""
    device = _device(text_model)
    with torch.no_grad():
        return torch.cat([text_model(input_ids=input_ids[s : s + batch_size].to(device),
                                     attention_mask=attention_mask[s : s + batch_size].to(device)).text_embeds.float()
                          for s in range(0, input_ids.shape[0], batch_size)])


def token_gradients(text_model: torch.nn.Module, prompts: TokenSlots, tokens: torch.Tensor,
                    targets: torch.Tensor, *, loss: PairLoss = cosine_loss) -> torch.Tensor:
    """``(Q, n, V)`` gradient of the summed loss w.r.t. the one-hot matrix of the adversarial tokens (GCG step 1)."""
    table = text_model.get_input_embeddings().weight  # (V, H)
    one_hot = F.one_hot(tokens.to(table.device), table.shape[0]).to(table.dtype).requires_grad_(True)  # (Q, n, V)
    device = table.device
    with token_embeddings_at(text_model, prompts.slots.to(device), one_hot @ table):
        emb = text_model(input_ids=prompts.with_tokens(tokens).to(device),
                         attention_mask=prompts.attention_mask.to(device)).text_embeds
    loss(emb, targets).sum().backward()
    return one_hot.grad.detach()


def candidate_swaps(grad: torch.Tensor, allowed: torch.Tensor, top_k: int, count: int,
                    generator: torch.Generator) -> torch.Tensor:
    """``(Q, C, 2)`` one-token swaps ``(position, token)`` per prompt from the ``top_k`` most negative gradients of
    each position (GCG step 2); every ``n * top_k`` swap when ``count`` allows, else ``count`` of them at random."""
    q, n, _ = grad.shape
    grad = grad.masked_fill(~allowed.to(grad.device), float("inf"))
    k = min(top_k, int(allowed.sum()))
    top = (-grad).topk(k, dim=-1).indices.cpu()  # (Q, n, k)
    positions = torch.arange(n)[:, None].expand(n, k).reshape(-1)  # (n k,)
    swaps = torch.stack([positions.expand(q, -1), top.reshape(q, -1)], dim=-1)  # (Q, n k, 2)
    if count >= n * k:
        return swaps
    pick = torch.stack([torch.randperm(n * k, generator=generator)[:count] for _ in range(q)])  # (Q, C)
    return swaps.gather(1, pick[..., None].expand(-1, -1, 2))


def evaluate_swaps(text_model: torch.nn.Module, prompts: TokenSlots, tokens: torch.Tensor, swaps: torch.Tensor,
                   targets: torch.Tensor, *, loss: PairLoss = cosine_loss) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact loss of every swap (GCG step 3): ``(Q, C, n)`` candidate tokens and their ``(Q, C)`` losses."""
    q, c, _ = swaps.shape
    candidates = tokens[:, None, :].repeat(1, c, 1)  # (Q, C, n)
    candidates.scatter_(2, swaps[..., :1], swaps[..., 1:])
    flat = prompts.repeat(c)
    ids = flat.with_tokens(candidates.reshape(q * c, -1))
    losses = loss(encode_ids(text_model, ids, flat.attention_mask), targets.repeat_interleave(c, dim=0))
    return candidates, losses.reshape(q, c).cpu()


def gcg_step(text_model: torch.nn.Module, prompts: TokenSlots, tokens: torch.Tensor, targets: torch.Tensor,
             budget: TokenBudget, allowed: torch.Tensor, generator: torch.Generator,
             current: torch.Tensor, *, loss: PairLoss = cosine_loss) -> tuple[torch.Tensor, torch.Tensor]:
    """One GCG step for every prompt: the better of the current tokens and the best evaluated swap, with its loss."""
    grad = token_gradients(text_model, prompts, tokens, targets, loss=loss)
    swaps = candidate_swaps(grad, allowed, budget.top_k, budget.candidates, generator)
    candidates, losses = evaluate_swaps(text_model, prompts, tokens, swaps, targets, loss=loss)
    best_loss, best = losses.min(dim=1)  # (Q,)
    better = best_loss < current
    chosen = candidates[torch.arange(tokens.shape[0]), best]  # (Q, n)
    return torch.where(better[:, None], chosen, tokens), torch.where(better, best_loss, current)


def _finish(text_model, tokenizer, prompts: TokenSlots, tokens: torch.Tensor, targets: torch.Tensor,
            history: list[float], loss: PairLoss) -> TokenAttackResult:
    ids = prompts.with_tokens(tokens)
    emb = encode_ids(text_model, ids, prompts.attention_mask)
    texts = [tokenizer.decode(row[mask.bool()], skip_special_tokens=True) for row, mask in zip(ids, prompts.attention_mask)]
    return TokenAttackResult(tokens.cpu(), ids, loss(emb, targets).cpu(), emb.cpu(), texts, history)


def gcg(text_model: torch.nn.Module, tokenizer, prompts: TokenSlots, targets: torch.Tensor, budget: TokenBudget, *,
        banned: Sequence[str] = (), loss: PairLoss = cosine_loss) -> TokenAttackResult:
    """Greedy coordinate gradient over the adversarial tokens of every prompt at once (see the module docstring).

    ``targets (Q, D)``: the embedding each prompt is pushed towards; ``loss``: what is minimised (lower is better).
    Gradients flow into the input only (the encoder's weights are left untouched and unchanged).
    """
    allowed = allowed_tokens(tokenizer, banned)
    generator = torch.Generator().manual_seed(budget.seed)
    tokens = prompts.input_ids.gather(1, prompts.slots)
    current = loss(encode_ids(text_model, prompts.with_tokens(tokens), prompts.attention_mask), targets).cpu()
    history = []
    with frozen(text_model):
        for _ in range(budget.steps):
            tokens, current = gcg_step(text_model, prompts, tokens, targets, budget, allowed, generator, current,
                                       loss=loss)
            history.append(float(current.mean()))
    return _finish(text_model, tokenizer, prompts, tokens, targets, history, loss)


@contextlib.contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """No parameter of ``model`` collects gradients inside (restored after)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def project(soft: torch.Tensor, table: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``(Q, n)`` the allowed vocabulary token nearest (cosine) to each soft embedding ``soft (Q, n, H)``."""
    sims = F.normalize(soft.float(), dim=-1) @ F.normalize(table.float(), dim=-1).T  # (Q, n, V)
    return sims.masked_fill(~allowed.to(sims.device), float("-inf")).argmax(dim=-1)


def pez(text_model: torch.nn.Module, tokenizer, prompts: TokenSlots, targets: torch.Tensor, budget: TokenBudget, *,
        banned: Sequence[str] = (), loss: PairLoss = cosine_loss) -> TokenAttackResult:
    """PEZ projected soft prompts (see the module docstring); keeps, per prompt, the best projected tokens seen."""
    allowed = allowed_tokens(tokenizer, banned)
    table = text_model.get_input_embeddings().weight.detach()  # (V, H)
    generator = torch.Generator().manual_seed(budget.seed)
    choices = allowed.nonzero().flatten()
    start = choices[torch.randint(len(choices), prompts.slots.shape, generator=generator)]  # (Q, n)
    soft = table[start.to(table.device)].clone().float().requires_grad_(True)  # (Q, n, H)
    optimizer = torch.optim.AdamW([soft], lr=budget.lr, weight_decay=0.1)
    device = table.device
    best_tokens, best_loss = start.clone(), torch.full((start.shape[0],), float("inf"))
    history = []
    with frozen(text_model):
        for _ in range(budget.steps):
            tokens = project(soft.detach(), table, allowed).cpu()  # (Q, n)
            hard = table[tokens.to(device)]
            straight = soft + (hard - soft).detach()  # forward at P', gradient onto P
            with token_embeddings_at(text_model, prompts.slots.to(device), straight):
                emb = text_model(input_ids=prompts.with_tokens(tokens).to(device),
                                 attention_mask=prompts.attention_mask.to(device)).text_embeds
            value = loss(emb, targets)  # (Q,)
            improved = value.detach().cpu() < best_loss
            best_tokens[improved], best_loss[improved] = tokens[improved], value.detach().cpu()[improved]
            optimizer.zero_grad()
            value.sum().backward()
            optimizer.step()
            history.append(float(best_loss.mean()))
    return _finish(text_model, tokenizer, prompts, best_tokens, targets, history, loss)


TOKEN_ATTACKS = {"gcg": gcg, "pez": pez}

"""Training losses of Unmix-CLIP (Rawlekar et al., arXiv 2502.02977): the MFI loss and the
Asymmetric Loss (Ridnik et al., ICCV 2021) used for the multi-label alignment.

Shapes: ``text [C, D']`` projected class text features (normalised inside), ``logits [B, C]``,
``targets [B, C]`` in {0, 1}.
"""
from __future__ import annotations

import torch

__all__ = ["MFI_FORMS", "mfi_loss", "asymmetric_loss"]

#: Named forms of the MFI loss. ``"class"``: penalise squared cosines between different classes'
#: projected text features. ``"barlow"``: a Barlow-Twins-style redundancy reduction over the
#: feature dimensions (the descriptions of the method disagree; both are offered).
MFI_FORMS = ("class", "barlow")


def mfi_loss(text: torch.Tensor, *, form: str = "class", off_diagonal_weight: float = 0.2,
             eps: float = 1e-5) -> torch.Tensor:
    """MFI loss of projected class text features ``text [C, D']`` (a scalar tensor).

    ``form="class"``: with ``t'_c = norm(text_c)`` and ``S = T' T'^T``,
    ``L = lambda * sum_{i != j} S_ij^2 / C``; the diagonal term ``(S_ii - 1)^2`` of the
    information-bottleneck form vanishes after normalisation and is omitted.

    ``form="barlow"``: standardise each of the D' dimensions over the C classes, build the
    ``D' x D'`` correlation ``K = Z^T Z / C`` and return
    ``sum_d (K_dd - 1)^2 + lambda * sum_{d != e} K_de^2``.

    ``off_diagonal_weight`` is lambda (0.2 by default).
    """
    if text.ndim != 2:
        raise ValueError(f"text must be [C, D'], got shape {tuple(text.shape)}")
    n_classes = text.shape[0]
    if form == "class":
        t = text / text.norm(dim=1, keepdim=True).clamp_min(1e-12)
        sim = t @ t.T
        off = sim - torch.diag_embed(torch.diagonal(sim))
        return off_diagonal_weight * off.pow(2).sum() / n_classes
    if form == "barlow":
        if n_classes < 2:
            raise ValueError("the 'barlow' MFI loss needs at least 2 classes")
        z = (text - text.mean(dim=0)) / (text.std(dim=0, unbiased=False) + eps)
        corr = z.T @ z / n_classes
        diag = torch.diagonal(corr)
        off = corr - torch.diag_embed(diag)
        return (diag - 1).pow(2).sum() + off_diagonal_weight * off.pow(2).sum()
    raise ValueError(f"unknown MFI loss form {form!r}; choose one of {MFI_FORMS}")


def asymmetric_loss(logits: torch.Tensor, targets: torch.Tensor, *, gamma_neg: float = 4.0,
                    gamma_pos: float = 1.0, margin: float = 0.05, eps: float = 1e-8,
                    ignore: torch.Tensor | None = None) -> torch.Tensor:
    """Asymmetric Loss, summed over classes and batch (a scalar tensor).

    ``p = sigmoid(logits)``; a positive contributes ``-(1 - p)^gamma_pos * log p``; a negative
    uses the shifted probability ``p_m = max(p - margin, 0)`` and contributes
    ``-p_m^gamma_neg * log(1 - p_m)``. Log arguments are clamped at ``eps``; the focusing
    factors carry no gradient. ``ignore`` (optional bool ``[B, C]``) drops entries.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    y = targets.to(logits.dtype)
    p = torch.sigmoid(logits)
    p_m = (p - margin).clamp_min(0) if margin > 0 else p
    loss_pos = y * torch.log(p.clamp_min(eps))
    loss_neg = (1 - y) * torch.log((1 - p_m).clamp_min(eps))
    with torch.no_grad():
        w_pos = (1 - p).pow(gamma_pos)
        w_neg = p_m.pow(gamma_neg)
    loss = -(w_pos * loss_pos + w_neg * loss_neg)
    if ignore is not None:
        loss = loss.masked_fill(ignore.to(torch.bool), 0.0)
    return loss.sum()

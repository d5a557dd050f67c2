"""The training loss: cross-entropy (optionally label-smoothed), mixed with knowledge distillation."""
from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F


def distillation_loss(logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch (Hinton et al. 2015).
    The T² keeps its gradient on the scale of the cross-entropy's as T changes."""
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    log_q = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * temperature**2


def training_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0,
                  teacher_logits: "Tensor | None" = None, kd_weight: float = 0.0, temperature: float = 1.0) -> Tensor:
    """(1 − w) · CE(logits, labels) + w · distillation_loss, or the plain CE without a teacher."""
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if teacher_logits is None:
        return ce
    return (1 - kd_weight) * ce + kd_weight * distillation_loss(logits, teacher_logits, temperature)

"""Response distillation (Hinton's soft targets) as a loss for `fit`.

In the core, not in `convslim.distill`, because every family's fine-tune may learn from a teacher
(`Task.tune(model, epochs, teacher)`); `convslim.distill` builds its feature losses on top of it.

    fit(model, splits, cfg, loss_fn=kd_loss_fn(teacher))
"""
import torch
import torch.nn.functional as F

from .device import device_of


def kd_loss(student_logits, teacher_logits, labels, *, temperature=4.0, alpha=0.9):
    """Hinton's soft targets: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels).

    The T^2 factor keeps the soft-target gradients on the same scale as the hard ones.
    """
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * (t * t)
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels)


def follow(teacher, device):
    """The teacher on `device` (the batch's): moved once, when the student has moved."""
    return teacher if device_of(teacher) == device else teacher.to(device)


def kd_loss_fn(teacher, *, temperature=4.0, alpha=0.9):
    """A `fit` loss function distilling from a frozen teacher (moved to each batch's device)."""
    teacher.eval()

    def loss_fn(model, x, y):
        logits = model(x)
        with torch.no_grad():
            target = follow(teacher, x.device)(x)
        return kd_loss(logits, target, y, temperature=temperature, alpha=alpha), logits
    return loss_fn

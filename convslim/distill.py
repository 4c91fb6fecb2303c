"""Knowledge distillation losses (seed 000 section 3, seed 002 section 1.3, seed 003 section 2.2.2):
a compressed or smaller model learns from its original.

Three kinds, combinable as one weighted sum:
- ``kd``: Hinton's soft targets at temperature T mixed with the hard label (response);
- ``hint``: FitNets, a student feature map through a learned 1x1 adapter matches a teacher one;
- ``attention``: attention transfer (Zagoruyko & Komodakis 2017) on chosen stages.

    log = distill_fit(student, teacher, splits, TrainConfig(epochs=5), DistillConfig(losses=("kd", "attention")))

`kd` itself lives in the core (convslim.kd) because every fine-tune may distil; `kd_loss_fn(teacher)`
is re-exported here, the plug for any `fit`.
"""
import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .device import device_of
from .errors import ConvslimError
from .hooks import run_with_hooks
from .kd import follow, kd_loss, kd_loss_fn  # noqa: F401  (kd_loss_fn: the public plug, see above)

LOSSES = ("kd", "hint", "attention")


def attention_map(feature, p=2):
    """Spatial attention of a feature map: mean over channels of |A|^p, flattened, unit L2 norm."""
    return F.normalize(feature.abs().pow(p).mean(1).flatten(1), dim=1)


def _match_size(x, size):
    """Bring a feature map to the teacher's spatial size (average-pool down, bilinear up)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def attention_loss(student_feature, teacher_feature, p=2):
    """AT loss of one stage pair: mean squared distance between normalised attention maps."""
    s = _match_size(student_feature, teacher_feature.shape[-2:])
    return (attention_map(s, p) - attention_map(teacher_feature, p)).pow(2).mean()


class HintAdapter(nn.Module):
    """FitNets' regressor: a learned 1x1 conv taking the student's channels to the teacher's."""

    def __init__(self, student_channels, teacher_channels):
        super().__init__()
        self.conv = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, student_feature, size=None):
        out = self.conv(student_feature)
        return _match_size(out, size) if size is not None else out


def hint_loss(student_feature, teacher_feature, adapter):
    """FitNets' hint loss: MSE between the adapted student map and the teacher's hint map."""
    return F.mse_loss(adapter(student_feature, teacher_feature.shape[-2:]), teacher_feature)


def stage_outputs(model, input_shape):
    """Names of the modules ending each resolution stage: for every spatial size of a 4-d
    output, the module that finishes last (so a whole stage, e.g. `layer2`, not its last ReLU)."""
    order = []

    def keep(name):
        def hook(mod, inputs, output):
            if torch.is_tensor(output):
                order.append((name, tuple(output.shape)))
        return hook

    run_with_hooks(model, {mod: keep(name) for name, mod in model.named_modules() if name},
                   torch.zeros(1, *input_shape, device=device_of(model)))
    last = {}
    for name, shape in order:
        if len(shape) == 4 and shape[-1] * shape[-2] > 1:
            last[shape[-2:]] = (name, shape)
    return [v for v in sorted(last.values(), key=lambda v: -v[1][-1] * v[1][-2])]


class FeatureTap:
    """Keeps the latest output of named modules (forward hooks), removed by `close`."""

    def __init__(self, model, names):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ConvslimError(f"no layer named {missing[0]!r} in the model")
        self.out = {}
        self.handles = [modules[n].register_forward_hook(self._keep(n)) for n in dict.fromkeys(names)]

    def _keep(self, name):
        def hook(mod, inputs, output):
            self.out[name] = output
        return hook

    def close(self):
        for h in self.handles:
            h.remove()
        self.handles = []


@dataclass
class DistillConfig:
    losses: tuple = ("kd",)
    temperature: float = 4.0
    alpha: float = 0.9               # weight of the soft targets in kd (1 - alpha on the labels)
    hint_weight: float = 1.0
    at_weight: float = 100.0         # beta/2 * sum over pairs of mean squared map distance (the AT
                                     # paper uses 1000 on 32x32 maps; the mean makes small maps weigh more)
    at_p: int = 2
    hint_layers: tuple = None        # (student layer, teacher layer); default: last stages
    at_layers: tuple = None          # ((student, teacher), ...); default: stages paired from the end

    def check(self):
        losses = tuple(self.losses)
        bad = [x for x in losses if x not in LOSSES]
        if not losses or bad:
            raise ConvslimError(f"unknown distillation loss {bad[0] if bad else ''!r}; choose from {', '.join(LOSSES)}")
        if not self.temperature > 0:
            raise ConvslimError(f"temperature must be positive, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ConvslimError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.hint_weight < 0 or self.at_weight < 0:
            raise ConvslimError("hint and attention weights must be non-negative")
        return self


def _pairs(student, teacher, input_shape, given, what):
    """Student/teacher layer pairs: given ones (checked), else stages matched from the end."""
    s_stages, t_stages = stage_outputs(student, input_shape), stage_outputs(teacher, input_shape)
    if given:
        return [tuple(p) for p in given]
    n = min(len(s_stages), len(t_stages))
    if n == 0:
        raise ConvslimError(f"no 4-d feature maps to use for {what}; name the layers explicitly")
    return [(s[0], t[0]) for s, t in zip(s_stages[-n:], t_stages[-n:])]


def _channels(model, name, input_shape):
    seen = {}
    run_with_hooks(model, {name: lambda m, i, o: seen.update(out=o)},   # the latest call's, as FeatureTap
                   torch.zeros(1, *input_shape, device=device_of(model)))
    out = seen["out"]
    if out.dim() != 4:
        raise ConvslimError(f"layer {name!r} gives a {out.dim()}-d output; hint and attention need 4-d feature maps")
    return out.shape[1]


class Distiller(nn.Module):
    """The student plus the hint adapters, trained together; forward is the student's.

    `fit` trains this module (so the adapters' weights get optimised), the student inside is
    updated in place; `close` removes the feature hooks when training is over.
    """

    def __init__(self, student, teacher, cfg, input_shape):
        super().__init__()
        self.cfg = cfg.check()
        self.student = student
        device = device_of(student)   # the teacher and the adapters live where the student does
        object.__setattr__(self, "teacher", teacher.to(device).eval())   # frozen, not a submodule
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.hint_pair = None
        self.at_pairs = []
        self.adapters = nn.ModuleDict()
        s_names, t_names = [], []
        if "hint" in cfg.losses:
            self.hint_pair = _pairs(student, teacher, input_shape, [cfg.hint_layers] if cfg.hint_layers else None,
                                    "hint")[-1]
            cs = _channels(student, self.hint_pair[0], input_shape)
            ct = _channels(teacher, self.hint_pair[1], input_shape)
            self.adapters["hint"] = HintAdapter(cs, ct).to(device)   # drawn on the CPU: same on every device
            s_names.append(self.hint_pair[0])
            t_names.append(self.hint_pair[1])
        if "attention" in cfg.losses:
            self.at_pairs = _pairs(student, teacher, input_shape, cfg.at_layers, "attention transfer")
            s_names += [s for s, _ in self.at_pairs]
            t_names += [t for _, t in self.at_pairs]
        self.s_tap = FeatureTap(student, s_names)
        self.t_tap = FeatureTap(teacher, t_names)

    def forward(self, x):
        return self.student(x)

    def loss(self, logits, x, y):
        """The combined loss for one batch whose student forward has just run."""
        cfg = self.cfg
        teacher = follow(self.teacher, x.device)
        with torch.no_grad():
            t_logits = teacher(x.contiguous())
        if "kd" in cfg.losses:
            loss = kd_loss(logits, t_logits, y, temperature=cfg.temperature, alpha=cfg.alpha)
        else:
            loss = F.cross_entropy(logits, y)
        s, t = self.s_tap.out, self.t_tap.out
        if self.hint_pair:
            loss = loss + cfg.hint_weight * hint_loss(s[self.hint_pair[0]], t[self.hint_pair[1]], self.adapters["hint"])
        if self.at_pairs:
            at = sum(attention_loss(s[a], t[b], cfg.at_p) for a, b in self.at_pairs)
            loss = loss + cfg.at_weight / 2 * at
        return loss

    def loss_fn(self):
        def loss_fn(net, x, y):
            logits = net(x)
            return self.loss(logits, x, y), logits
        return loss_fn

    def close(self):
        self.s_tap.close()
        self.t_tap.close()


@contextlib.contextmanager
def distiller(student, teacher, cfg=None, input_shape=None):
    """`with distiller(student, teacher, cfg) as d: fit(d, splits, tc, loss_fn=d.loss_fn())`."""
    from .checkpoint import record_of

    shape = input_shape or record_of(student).input_shape
    d = Distiller(student, teacher, cfg or DistillConfig(), shape)
    try:
        yield d
    finally:
        d.close()


def distill_fit(student, teacher, splits, train_cfg=None, cfg=None, *, validate=True):
    """Train `student` in place from `teacher` with the configured losses, on convslim Splits or
    your own DataLoader of (input, target) batches; returns fit's log."""
    from .batches import split_batch
    from .train import fit

    shape = getattr(splits, "input_shape", None) or list(split_batch(next(iter(splits)))[0].shape[1:])
    with distiller(student, teacher, cfg, list(shape)) as d:
        return fit(d, splits, train_cfg, loss_fn=d.loss_fn(), validate=validate)


def report_section(report, summary):
    """Report section: training curve of the student against the teacher's accuracy."""
    import matplotlib.pyplot as plt

    sec = report.section("Knowledge distillation",
                         f"Losses: {', '.join(summary['losses'])}. Teacher test top-1 {summary['teacher_test']:.2f}%, "
                         f"student {summary['student_test_before']:.2f}% before and "
                         f"{summary['student_test']:.2f}% after distillation.")
    sec.tables.append((["model", "params", "FLOPs", "test top-1 %"], [
        ["teacher", summary["teacher_params"], summary["teacher_flops"], f"{summary['teacher_test']:.2f}"],
        ["student", summary["student_params"], summary["student_flops"], f"{summary['student_test']:.2f}"]]))
    epochs = summary["epochs"]
    if epochs and "val_acc" in epochs[0]:
        plt.figure(figsize=(5, 3.2))
        plt.plot([e["epoch"] for e in epochs], [e["val_acc"] for e in epochs], "o-", label="student (val)")
        plt.axhline(summary["teacher_val"], color="gray", ls="--", label="teacher (val)")
        plt.xlabel("epoch")
        plt.ylabel("top-1 %")
        plt.legend()
        report.figure(sec, "distill_curve", "Student validation accuracy per epoch against the teacher")
    return sec

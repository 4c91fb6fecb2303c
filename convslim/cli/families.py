"""`convslim distill`, `decompose`, `sparsify`, `convert` and `compare` (per-layer separable/Ghost
costs): the families beside channel pruning, each a thin face of its Python API."""
import copy
from pathlib import Path

from ..budget import PROBE_EPOCHS, SearchConfig
from ..checkpoint import example_input, record_of, save
from ..errors import ConvslimError
from ..metrics import count
from .latency import add_latency_args, report_latency
from .common import (add_data_args, add_model_args, budget_line, float_range, fraction, int_range, non_negative,
                     open_data, open_model, open_model_and_data, positive, positive_int, settings, write_json)


def _finish(args, summary, section):
    """--json and --report, shared by every command."""
    if args.json:
        write_json(args, args.json, summary)
        print(f"wrote {args.json}")
    if args.report:
        from ..report import Report

        report = Report(args.report, f"convslim {args.command}")
        section(report)
        print(f"report: {report.write()}")


def _add_train_args(p, epochs, lr):
    p.add_argument("--epochs", type=non_negative, default=epochs, help="training epochs")
    p.add_argument("--lr", type=positive, default=lr)
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--weight-decay", type=non_negative, default=5e-4)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _train_cfg(args, epochs=None):
    from ..train import TrainConfig

    return TrainConfig(epochs=args.epochs if epochs is None else epochs, lr=args.lr, batch_size=args.batch_size,
                       weight_decay=args.weight_decay, seed=args.seed, device=args.device,
                       progress=not args.quiet).check()


def _task(args, splits):
    """The fine-tune `_train_cfg` describes, as a Task: `tune(model, epochs, teacher)`."""
    from ..task import Task

    return Task.from_splits(splits, lr=args.lr, batch_size=args.batch_size, seed=args.seed, device=args.device,
                            progress=not args.quiet, weight_decay=args.weight_decay)


def _add_distill_args(p, default="kd"):
    p.add_argument("--loss", default=default, help="kd, hint, attention, or a comma-separated mix (kd,attention)")
    p.add_argument("--temperature", type=positive, default=4.0, help="kd: softmax temperature T")
    p.add_argument("--alpha", type=fraction, default=0.9, help="kd: weight of the soft targets (1 - alpha: labels)")
    p.add_argument("--hint-weight", type=non_negative, default=1.0)
    p.add_argument("--at-weight", type=non_negative, default=100.0, help="attention transfer beta (AT paper: 1000 on 32x32 maps)")
    p.add_argument("--hint-layers", help="STUDENT_LAYER:TEACHER_LAYER (default: the last feature maps)")
    p.add_argument("--at-layers", help="S:T[,S:T...] (default: stages paired from the end)")


def _pairs(text, what):
    pairs = []
    for item in text.split(","):
        s, sep, t = item.strip().partition(":")
        if not (sep and s and t):
            raise ConvslimError(f"{what} expects STUDENT_LAYER:TEACHER_LAYER pairs, got {item!r}")
        pairs.append((s, t))
    return pairs


def _distill_cfg(args):
    from ..distill import DistillConfig

    return DistillConfig(losses=tuple(x.strip() for x in args.loss.split(",") if x.strip()),
                         temperature=args.temperature, alpha=args.alpha, hint_weight=args.hint_weight,
                         at_weight=args.at_weight,
                         hint_layers=_pairs(args.hint_layers, "--hint-layers")[0] if args.hint_layers else None,
                         at_layers=_pairs(args.at_layers, "--at-layers") if args.at_layers else None).check()


def _sizes(model):
    c = count(model, example_input(model))
    return c["params"], c["flops"]


def _top1(model, splits, args, split="test"):
    """Top-1 on a split, scored on --device (never moved to another one)."""
    from ..distributed import pick_device
    from ..train import evaluate
    return evaluate(model, splits, split, device=pick_device(args.device))["top1"]


# --- distill -------------------------------------------------------------------------------------

def cmd_distill(args):
    from ..distill import distill_fit, report_section
    from ..binding import remember_data

    if not args.teacher.endswith(".pt"):
        raise ConvslimError(f"--teacher must be a trained model saved as .pt, got {args.teacher!r}")
    dcfg = _distill_cfg(args)
    cfg = _train_cfg(args)
    teacher = open_model(args, spec=args.teacher)
    splits = open_data(args, teacher)
    student = open_model(args, None if args.student.endswith(".pt") else splits, spec=args.student)
    if args.student.endswith(".pt"):
        norm = record_of(student).meta.get("normalization")
        if norm and norm != record_of(teacher).meta.get("normalization"):
            raise ConvslimError("student and teacher were trained with different input normalisation; "
                                "distil into a fresh student or one trained on the same data")
        open_data(args, student)  # checks shape and classes
    remember_data(student, splits, args.data)
    teacher_test, teacher_val = _top1(teacher, splits, args, "test"), _top1(teacher, splits, args, "val")
    before = _top1(student, splits, args, "test")
    log = distill_fit(student, teacher, splits, cfg, dcfg)
    student.eval()
    after = _top1(student, splits, args, "test")
    tp, tf = _sizes(teacher)
    sp, sf = _sizes(student)
    summary = {"losses": list(dcfg.losses), "teacher_test": teacher_test, "teacher_val": teacher_val,
               "student_test_before": before, "student_test": after, "teacher_params": tp, "teacher_flops": tf,
               "student_params": sp, "student_flops": sf, "epochs": log["epochs"], "seconds": log["seconds"]}
    save(student, args.out,
         distill={"teacher": str(Path(args.teacher).resolve()), "losses": list(dcfg.losses),
                  "temperature": dcfg.temperature, "alpha": dcfg.alpha, "epochs": cfg.epochs, "test_acc": after})
    print(f"teacher: top-1 {teacher_test:.2f}%  ({tp:,} params, {tf:,} FLOPs)")
    print(f"student: top-1 {before:.2f}% -> {after:.2f}% after {cfg.epochs:g} epochs of {'+'.join(dcfg.losses)} "
          f"({sp:,} params, {sf:,} FLOPs)")
    print(f"saved {args.out}")
    _finish(args, summary, lambda r: report_section(r, summary))


# --- decompose -----------------------------------------------------------------------------------

def print_layers(rows):
    width = max([len(r["layer"]) for r in rows] + [5])
    print(f"{'layer':<{width}}  {'method':<7} {'ranks (full)':<18} {'FLOPs':>12} {'new FLOPs':>12}  applied")
    for r in rows:
        ranks = f"{r['ranks']} ({r['full_ranks']})"
        print(f"{r['layer']:<{width}}  {r['method']:<7} {ranks:<18} {r['flops']:>12,} {r['new_flops']:>12,}  "
              f"{'yes' if r['apply'] else 'no: FLOPs would not drop'}")


def cmd_decompose(args):
    from ..budget import flops_params
    from ..decomposition import auto_decompose, decompose
    from ..decomposition.report import report_section

    layers = [x.strip() for x in args.layers.split(",")] if args.layers else None
    if args.auto and not args.data:
        raise ConvslimError("--auto needs --data (the search is judged on its validation split)")
    if args.epochs > 0 and not args.data:
        raise ConvslimError("--epochs needs --data to fine-tune on")
    if args.auto:
        cfg = SearchConfig(max_acc_loss=args.max_acc_loss, min_interval=args.min_interval,
                           probe_epochs=args.probe_epochs, final_epochs=args.final_epochs, lr=args.lr,
                           batch_size=args.batch_size, distill=args.distill, seed=args.seed,
                           device=args.device).check()
        log = args.log
        model, splits = open_model_and_data(args)
        print(f"searching the energy in [0, 1] to within {cfg.min_interval} ({cfg.probes} probes), budget "
              f"{cfg.max_acc_loss} points on the validation split; log {log}")
        try:
            slim, summary = auto_decompose(model, splits, args.method, cfg, layers=layers, log_path=log,
                                           settings=settings(args),
                                           model_id=args.model, progress=not args.quiet)
        except KeyboardInterrupt:
            raise ConvslimError(f"interrupted; run the same command again to resume from {log}") from None
        print(f"chosen energy {summary['chosen_energy']:.4f}")
        print(budget_line(summary))
    else:
        model, splits = open_model_and_data(args) if args.data else (open_model(args), None)
        slim, rows = decompose(model, args.method, args.energy, layers=layers)
        summary = {"method": args.method, "energy": args.energy, "layers": rows}
        if splits is not None:
            summary["base_test_acc"] = _top1(model, splits, args, "test")
            summary["decomposed_test_acc"] = _top1(slim, splits, args, "test")
            if args.epochs > 0:
                _task(args, splits).tune(slim, args.epochs, copy.deepcopy(model) if args.distill else None)
                slim.eval()
            summary["test_acc"] = _top1(slim, splits, args, "test")
        summary.update(flops_params(count(model, example_input(model)), count(slim, example_input(slim))))
    print_layers(summary["layers"])
    print(f"FLOPs {summary['base_flops']:,} -> {summary['flops']:,} (-{summary['flops_reduction']:.1f}%), "
          f"params {summary['base_params']:,} -> {summary['params']:,} (-{summary['params_reduction']:.1f}%)")
    if "test_acc" in summary:
        tuned = args.epochs > 0 or args.auto
        mid = f" -> {summary['decomposed_test_acc']:.2f}% decomposed" if tuned and "decomposed_test_acc" in summary else ""
        print(f"test top-1 {summary['base_test_acc']:.2f}%{mid} -> {summary['test_acc']:.2f}%"
              + (" after fine-tuning" if tuned else " decomposed, not fine-tuned (see --epochs, --auto)"))
    save(slim, args.out, decompose={"method": args.method, "energy": summary.get(
        "chosen_energy", args.energy), "test_acc": summary.get("test_acc")})
    print(f"saved {args.out}")
    report_latency(model, slim, args, summary)
    _finish(args, summary, lambda r: report_section(r, summary))


# --- sparsify ------------------------------------------------------------------------------------

def cmd_sparsify(args):
    from ..sparsity import SparsifyConfig, save_sparse, sparsify, storage_sizes
    from ..sparsity.report import report_section

    if not (args.out or args.csr):
        raise ConvslimError("give --out (dense .pt with zeros) and/or --csr (sparse CSR file)")
    cfg = SparsifyConfig(sparsity=args.sparsity, scope=args.scope, steps=args.steps, schedule=args.schedule,
                         epochs_per_step=args.epochs_per_step, final_epochs=args.final_epochs, lr=args.lr,
                         batch_size=args.batch_size, distill=args.distill,
                         exclude=tuple(x.strip() for x in args.exclude.split(",")) if args.exclude else (),
                         seed=args.seed, device=args.device).check()
    model, splits = open_model_and_data(args) if args.data else (open_model(args), None)
    sparse, _, summary = sparsify(model, splits, cfg, progress=not args.quiet)
    summary["sizes"] = storage_sizes(sparse)
    if splits is not None:
        summary["base_test_acc"] = _top1(model, splits, args, "test")
        summary["test_acc"] = _top1(sparse, splits, args, "test")
        print(f"test top-1 {summary['base_test_acc']:.2f}% dense -> {summary['test_acc']:.2f}% at "
              f"{100 * summary['sparsity']:.1f}% sparsity")
    size = summary["sizes"]
    print(f"zeros: {100 * summary['sparsity']:.1f}% of conv/linear weights ({cfg.scope}); on disk: dense "
          f"{size['dense_bytes'] / 1024:.1f} KiB, CSR {size['csr_bytes'] / 1024:.1f} KiB "
          f"({size['dense_bytes'] / size['csr_bytes']:.2f}x smaller); FLOPs unchanged on dense kernels")
    summary.update(base_flops=count(model, example_input(model))["flops"], flops=count(sparse, example_input(sparse))["flops"])
    report_latency(model, sparse, args, summary)
    meta = {"sparsity": summary["sparsity"], "scope": cfg.scope, "test_acc": summary.get("test_acc")}
    if args.out:
        save(sparse, args.out, sparsify=meta)
        print(f"saved {args.out}")
    if args.csr:
        save_sparse(sparse, args.csr, sparsify=meta)
        print(f"saved {args.csr} (load with convslim.sparsity.load_sparse)")
    _finish(args, summary, lambda r: report_section(r, summary))


# --- convert and compare -------------------------------------------------------------------------

def cmd_convert(args):
    from ..convert import convert, report_section
    from ..distill import distill_fit

    if not args.model.endswith(".pt"):
        raise ConvslimError("--model must be a trained model saved as .pt: it is the teacher of the converted one")
    dcfg = _distill_cfg(args)
    cfg = _train_cfg(args)
    model, splits = open_model_and_data(args)
    layers = [x.strip() for x in args.layers.split(",")] if args.layers else None
    student, rows = convert(model, args.to, ratio=args.ratio, dw=args.dw, include_stem=args.include_stem,
                            layers=layers)
    print(f"converted {sum(r['apply'] for r in rows)} of {len(rows)} conv layers to {args.to}; "
          f"training by distillation ({'+'.join(dcfg.losses)}) for {cfg.epochs:g} epochs")
    distill_fit(student, model, splits, cfg, dcfg)
    student.eval()
    bp, bf = _sizes(model)
    sp, sf = _sizes(student)
    summary = {"to": args.to, "epochs": cfg.epochs, "base_test": _top1(model, splits, args, "test"),
               "test": _top1(student, splits, args, "test"), "base_params": bp, "params": sp,
               "base_flops": bf, "flops": sf, "layers": rows}
    save(student, args.out, convert={"to": args.to, "test_acc": summary["test"]})
    print(f"test top-1 {summary['base_test']:.2f}% -> {summary['test']:.2f}%, params {bp:,} -> {sp:,}, "
          f"FLOPs {bf:,} -> {sf:,}")
    report_latency(model, student, args, summary)
    print(f"saved {args.out}")
    _finish(args, summary, lambda r: report_section(r, rows, summary))


def cmd_compare(args):
    from ..convert import compare_layers, format_table, report_section, totals

    model = open_model(args)
    rows = compare_layers(model, ratio=args.ratio, dw=args.dw)
    if not rows:
        raise ConvslimError("the model has no plain (ungrouped) conv layers to compare")
    print(format_table(rows))
    now, sep, gho = totals(rows), totals(rows, "separable"), totals(rows, "ghost")
    print(f"\nall listed layers: params {now['params']:,} as is, {sep['params']:,} separable, {gho['params']:,} ghost; "
          f"FLOPs {now['flops']:,}, {sep['flops']:,}, {gho['flops']:,}")
    print("sep/orig is measured on the built replacement (depthwise + BN + pointwise, FLOPs with the bias term); "
          "1/Co+1/k2 is the seeds' formula")
    _finish(args, {"layers": rows, "totals": {"as_is": now, "separable": sep, "ghost": gho}},
            lambda r: report_section(r, rows))


def register(sub):
    p = sub.add_parser("distill", help="train a student from a teacher (kd, hint, attention)")
    p.add_argument("--teacher", required=True, help="trained teacher (.pt)")
    p.add_argument("--student", required=True, help="zoo name, file.py:factory or a saved .pt")
    p.add_argument("--width", type=positive, default=1.0, help="width multiplier for a zoo student")
    add_data_args(p, required=True)
    _add_distill_args(p)
    _add_train_args(p, epochs=10, lr=0.05)
    p.add_argument("--out", required=True, help="where to save the student (.pt)")
    p.add_argument("--json")
    p.add_argument("--report", help="report folder (Markdown, HTML, plots)")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("decompose", help="low-rank decomposition: SVD, Tucker-2 or CP, ranks by energy")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--method", choices=["svd", "tucker", "cp"], default="tucker")
    p.add_argument("--energy", type=float_range(0, 1, lo_open=True), default=0.9, help="share of squared singular values kept, in (0, 1]")
    p.add_argument("--layers", help="comma-separated layer names (default: every conv and linear layer)")
    p.add_argument("--auto", action="store_true", help="search the energy within --max-acc-loss")
    p.add_argument("--max-acc-loss", type=float, default=1.0)
    p.add_argument("--min-interval", type=float, default=0.01)
    p.add_argument("--probe-epochs", type=non_negative, default=None, help=f"fine-tune per probe (default {PROBE_EPOCHS:g})")
    p.add_argument("--final-epochs", type=non_negative, default=10.0)
    p.add_argument("--distill", action="store_true", help="fine-tunes learn from the original (KD)")
    p.add_argument("--log", help="search log (default OUT.search.json); an existing one is resumed")
    _add_train_args(p, epochs=0, lr=0.01)
    p.add_argument("--out", required=True)
    p.add_argument("--json")
    p.add_argument("--report")
    add_latency_args(p, aware=False)
    p.set_defaults(func=cmd_decompose)

    p = sub.add_parser("sparsify", help="unstructured magnitude pruning with CSR storage")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--sparsity", type=float_range(0, 1, hi_open=True), default=0.9, help="share of conv/linear weights set to zero")
    p.add_argument("--scope", choices=["global", "layer"], default="global")
    p.add_argument("--steps", type=positive_int, default=3, help="prune / fine-tune rounds")
    p.add_argument("--schedule", choices=["cubic", "linear"], default="cubic")
    p.add_argument("--epochs-per-step", type=non_negative, default=1.0)
    p.add_argument("--final-epochs", type=non_negative, default=0.0)
    p.add_argument("--distill", action="store_true", help="fine-tunes learn from the dense original (KD)")
    p.add_argument("--exclude", help="comma-separated layer names left dense")
    _add_train_args(p, epochs=0, lr=0.01)
    p.add_argument("--out", help="the sparse model as an ordinary (dense) .pt")
    p.add_argument("--csr", help="the sparse model in CSR storage")
    p.add_argument("--json")
    p.add_argument("--report")
    add_latency_args(p, aware=False)
    p.set_defaults(func=cmd_sparsify)

    p = sub.add_parser("convert", help="replace conv layers by separable or Ghost modules, train by KD")
    add_model_args(p)
    add_data_args(p, required=True)
    p.add_argument("--to", choices=["separable", "ghost"], required=True)
    p.add_argument("--ratio", type=int_range(2), default=2, help="ghost: output maps per intrinsic map")
    p.add_argument("--dw", type=int_range(1), default=3, help="ghost: kernel of the cheap depthwise conv")
    p.add_argument("--include-stem", action="store_true", help="also convert the first conv")
    p.add_argument("--layers", help="comma-separated conv layers to convert (default: all but the stem)")
    _add_distill_args(p)
    _add_train_args(p, epochs=10, lr=0.05)
    p.add_argument("--out", required=True)
    p.add_argument("--json")
    p.add_argument("--report")
    add_latency_args(p, aware=False)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("compare", help="per conv layer: params and FLOPs as is, as separable, as Ghost")
    add_model_args(p)
    p.add_argument("--ratio", type=int_range(2), default=2)
    p.add_argument("--dw", type=int_range(1), default=3)
    p.add_argument("--json")
    p.add_argument("--report")
    p.set_defaults(func=cmd_compare)

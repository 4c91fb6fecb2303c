"""`convslim prune`, `convslim auto` and `convslim report`."""
import argparse
import json
from pathlib import Path

from ..budget import CALIBRATED_PROBE_EPOCHS, PROBE_EPOCHS, SEARCHES, SearchConfig, verification_epochs
from ..checkpoint import save
from ..errors import ConvslimError
from ..pruning.auto import DEFAULT_SEARCH, auto_defaults
from ..pruning.criteria import CRITERIA, PermutationOptions
from ..pruning.importance import ESTIMATORS, MEASURES, PERMS
from .common import (add_data_args, add_model_args, budget_line, fraction, non_negative, open_model_and_data,
                     open_teacher, positive, positive_int, settings, write_json)
from .latency import add_latency_args, latency_tables, report_latency


def add_importance_args(p):
    p.add_argument("--criterion", choices=CRITERIA, default="permutation")
    p.add_argument("--perm", choices=PERMS, default="shuffle", help="how a kernel is destroyed")
    p.add_argument("--estimator", choices=ESTIMATORS, default="expected",
                   help="shuffle: closed-form expectation or sampled permutations")
    p.add_argument("--samples", type=positive_int, default=1, help="sampled permutations per kernel (estimator sample)")
    p.add_argument("--input", choices=["data", "random"], default="data", help="feature maps from real or random images")
    p.add_argument("--measure", choices=MEASURES, default=PermutationOptions.measure,
                   help="change measured at the conv (default) or after its BatchNorm")
    p.add_argument("--calib-batches", type=positive_int, default=4, help="training batches used for scoring")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    p.add_argument("--ignore", type=lambda t: [x.strip() for x in t.split(",") if x.strip()], default=[],
                   help="layers never pruned: names or patterns, comma-separated (head.*,stem.0); the model's "
                        "output layers are always kept")
    p.add_argument("--multiple", type=positive_int, default=1, help="round channel counts up to a multiple")


def add_output_args(p):
    p.add_argument("--report", help="write a Markdown/HTML report with plots to this folder")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--out", required=True, help="where to save the pruned model (.pt)")


def options_from(args):
    return PermutationOptions(perm=args.perm, estimator=args.estimator, samples=args.samples,
                              measure=args.measure, input=args.input, seed=args.seed)


def read_ratios(path):
    path = Path(path)
    if not path.exists():
        raise ConvslimError(f"ratios file not found: {path}")
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConvslimError(f"ratios file {path} is not JSON: {exc.msg} (line {exc.lineno})") from exc
    if not isinstance(table, dict) or not all(isinstance(v, (int, float)) for v in table.values()):
        raise ConvslimError(f"ratios file {path} must map layer names to ratios, e.g. {{\"layer1.0.conv1\": 0.5}}")
    return table


def print_result(summary):
    print(f"{'':<10}{'top-1 %':>10}{'FLOPs':>14}{'params':>12}")
    print(f"{'base':<10}{summary['base_test_acc']:>10.2f}{summary['base_flops']:>14,}{summary['base_params']:>12,}")
    print(f"{'pruned':<10}{summary['test_acc']:>10.2f}{summary['flops']:>14,}{summary['params']:>12,}")
    print(f"accuracy change {summary['test_acc'] - summary['base_test_acc']:+.2f} points (test), "
          f"FLOPs reduction {summary['flops_reduction']:.1f}%, params reduction {summary['params_reduction']:.1f}%")


def cmd_prune(args):
    from ..budget import flops_params
    from ..checkpoint import example_input
    from ..distributed import pick_device
    from ..metrics import count
    from ..pruning.prune import apply_rule, channel_importance
    from ..task import Task
    from ..train import evaluate

    rules = [(k, v) for k, v in (("cr", args.cr), ("ratio", args.ratio), ("ratios", args.ratios)) if v is not None]
    if len(rules) != 1:
        raise ConvslimError("give exactly one rule: --cr, --ratio or --ratios")
    rule, value = rules[0]
    value = read_ratios(value) if rule == "ratios" else value
    out = Path(args.out)
    teacher = open_teacher(args)
    model, splits = open_model_and_data(args)
    imp = channel_importance(model, splits, criterion=args.criterion, calib_batches=args.calib_batches,
                             options=options_from(args), seed=args.seed, ignored_layers=args.ignore)
    slim, kept = apply_rule(model, imp, rule, value, multiple=args.multiple,
                            latency=latency_tables(args) if args.latency_aware else None)
    Task.from_splits(splits, lr=args.lr, seed=args.seed, device=args.device,
                     progress=True).tune(slim, args.finetune_epochs, teacher)
    summary = flops_params(count(model, example_input(model)), count(slim, example_input(slim)))
    device = pick_device(args.device)                  # scored where it was tuned, as --device says
    summary.update(base_test_acc=evaluate(model, splits, "test", device=device)["top1"],
                   test_acc=evaluate(slim, splits, "test", device=device)["top1"],
                   rule=rule, value=value, criterion=args.criterion, channels=kept)
    save(slim, out, inputs=[args.model, args.weights], pruning={"rule": rule, "criterion": args.criterion})
    print_result(summary)
    report_latency(model, slim, args, summary)
    finish(args, out, summary, model, splits, imp, with_search=False)


def finish(args, out, summary, model, splits, imp, with_search):
    """What prune and auto print and write once the model is saved: the JSON and the report."""
    print(f"saved {out}")
    if args.json:
        write_json(args, args.json, summary)
    if args.report:
        from ..pruning.report import write_pruning_report
        report = write_pruning_report(args.report, model, splits, imp, summary=summary if with_search else None)
        print(f"report: {report}")


def cmd_auto(args):
    from ..pruning.prune import channel_importance
    from ..pruning.auto import auto_prune

    cfg = auto_defaults(SearchConfig(max_acc_loss=args.max_acc_loss, min_interval=args.min_interval,
                                     probe_epochs=args.probe_epochs, final_epochs=args.final_epochs, lr=args.lr,
                                     batch_size=args.batch_size, distill=args.distill, multiple=args.multiple,
                                     seed=args.seed, device=args.device, search=args.search,
                                     verify_epochs=args.verify_epochs).check())
    out, log = Path(args.out), args.log
    target = (("flops", args.target_flops) if args.target_flops is not None else
              ("params", args.target_params) if args.target_params is not None else
              ("latency", args.target_latency) if args.target_latency is not None else None)
    aware = args.latency_aware or args.target_latency is not None
    teacher = open_teacher(args)
    model, splits = open_model_and_data(args)
    if target:
        what = (f"{target[1]:g} ms on {args.engine} (batch {args.latency_batch[0]})" if target[0] == "latency" else
                f"{target[1]:g}{' of the original' if target[1] <= 1 else ''} {target[0]}")
        print(f"pruning to at most {what}, then {cfg.final_epochs:g} epochs of fine-tuning")
    else:
        how = (f"steps that each remove a share of the current FLOPs, {cfg.probe_epochs:g} epochs each, at most "
               f"{cfg.final_epochs:g} epochs in all" if cfg.search in ("progressive", "verified") else
               f"cr in [0, 1] to within {cfg.min_interval}, {cfg.probe_epochs:g}-epoch probes" + (
                   f" and {verification_epochs(cfg):.3g}-epoch verifications, at most {cfg.final_epochs:g} epochs in all"
                   if cfg.search == "calibrated" else ""))
        source = "teacher" if args.teacher else "original" if cfg.distill else None
        print(f"searching {how} ({cfg.search} search{f', distilling from the {source}' if source else ''}), "
              f"budget {cfg.max_acc_loss} points on the validation split; log {log}")
    print(f"scoring channel importance ({args.criterion}) on {args.calib_batches} training batches", flush=True)
    imp = channel_importance(model, splits, criterion=args.criterion, calib_batches=args.calib_batches,
                             options=options_from(args), seed=args.seed, ignored_layers=args.ignore)
    try:
        best, summary = auto_prune(model, splits, cfg, importance=imp, teacher=teacher, log_path=log, target=target,
                                   settings=settings(args), latency=latency_tables(args) if aware else None,
                                   model_id=str(Path(args.model).resolve()) if args.model.endswith(".pt") else args.model)
    except KeyboardInterrupt:
        raise ConvslimError(f"interrupted; run the same command again to resume from {log}") from None
    save(best, out, inputs=[args.model, args.weights], search={k: summary[k] for k in
         ("chosen_cr", "flops_reduction", "params_reduction", "test_acc", "base_test_acc")})
    print_result(summary)
    report_latency(model, best, args, summary)
    if target:
        print(f"cost: {summary['epochs']:g} epochs of fine-tuning, {summary['final_seconds']:.0f}s")
    else:
        print(f"search cost: {summary['probes']} probes, {summary['verifications']} verifications, "
              f"{summary['search_epochs']:g} epochs searching + {summary['final_epochs']:g} final; "
              f"{summary['search_seconds']:.0f}s searching + {summary['final_seconds']:.0f}s final fine-tune")
        print(budget_line(summary))
    finish(args, out, summary, model, splits, imp, with_search=not target)


def count_value(text):
    """A FLOPs or params target: a share of the original (0.5) or a count (20M, 1.5G, 300000)."""
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:].upper(), 1)
    try:
        value = float(text[:-1] if scale != 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a share such as 0.5 or a count such as 20M, got {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def cmd_report(args):
    from ..pruning.prune import channel_importance
    from ..pruning.report import write_pruning_report

    model, splits = open_model_and_data(args)
    summary = None
    if args.summary:
        path = Path(args.summary)
        if not path.exists():
            raise ConvslimError(f"summary file not found: {path}")
        try:
            summary = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ConvslimError(f"summary file {path} is not JSON written by `auto --json`") from None
    imp = channel_importance(model, splits, criterion=args.criterion, calib_batches=args.calib_batches,
                             options=options_from(args), seed=args.seed)
    print(f"report: {write_pruning_report(args.out, model, splits, imp, summary=summary)}")


def register(sub):
    p = sub.add_parser("prune", help="prune channels once with a fixed rule (no search)")
    add_model_args(p)
    add_data_args(p)
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--cr", type=fraction, help="cumulative contribution rate in [0, 1]")
    rule.add_argument("--ratio", type=fraction, help="one pruning ratio for every layer, in [0, 1]")
    rule.add_argument("--ratios", help="JSON file mapping layer names to pruning ratios")
    add_importance_args(p)
    add_latency_args(p)
    add_output_args(p)
    p.add_argument("--finetune-epochs", type=non_negative, default=0)
    p.add_argument("--teacher", help="saved model to distil from while fine-tuning")
    p.add_argument("--lr", type=positive, default=0.01)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("auto", help="fully automatic pruning within an accuracy budget")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--max-acc-loss", type=float, default=1.0, help="accepted accuracy loss, percentage points")
    p.add_argument("--min-interval", type=float, default=0.01, help="search resolution on cr")
    p.add_argument("--probe-epochs", type=non_negative, default=None,
                   help=f"fine-tune per probe or step after BN re-estimation (default {CALIBRATED_PROBE_EPOCHS:g} for "
                        f"the calibrated search, {PROBE_EPOCHS:g} for the others)")
    p.add_argument("--final-epochs", type=non_negative, default=10.0, help="fine-tune of the chosen model")
    p.add_argument("--lr", type=positive, default=0.01, help="fine-tuning learning rate")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--distill", action=argparse.BooleanOptionalAction, default=None,
                   help="the search's fine-tunes and the final one distil from the original model (default on "
                        "for auto: more compression within budget on every model in RESULTS.md table 8)")
    p.add_argument("--teacher", help="saved model to distil from in every fine-tune (implies distillation)")
    p.add_argument("--log", help="search log (default OUT.search.json); an existing one is resumed")
    p.add_argument("--search", choices=SEARCHES, default=DEFAULT_SEARCH,
                   help="thesis: bisection on probe readings; calibrated: bisection judged by the damage "
                        "predicted after the final fine-tune from probe and verification readings; progressive: compounding steps, paired costs summed; "
                        "verified: compounding steps judged one by one, then one verification fine-tune "
                        "(see README)")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--target-flops", type=count_value, help="dual mode: the least pruned model with at most "
                      "this many FLOPs (a share such as 0.5, or a count such as 20M); no accuracy budget")
    goal.add_argument("--target-params", type=count_value, help="dual mode, on parameters")
    goal.add_argument("--target-latency", type=positive, metavar="MS", help="dual mode on time: the least pruned "
                      "model that measures at most MS milliseconds on --engine at the first --latency-batch "
                      "(implies --latency-aware)")
    p.add_argument("--verify-epochs", type=positive, help="calibrated: fine-tune per verification "
                                                          "(default final-epochs / 4)")
    add_importance_args(p)
    add_latency_args(p)
    add_output_args(p)
    p.set_defaults(func=cmd_auto)

    p = sub.add_parser("report", help="pruning report with plots (Markdown and HTML)")
    add_model_args(p)
    add_data_args(p)
    add_importance_args(p)
    p.add_argument("--summary", help="JSON written by `auto --json`, to add the result and search trajectory")
    p.add_argument("--out", required=True, help="report folder")
    p.set_defaults(func=cmd_report, folder_args=("out",))

"""Seconds to score every channel of a model with permutation importance, three ways, in one run:
(a) the thesis's per-channel loop, (b) one forward per layer, (c) the closed-form expectation;
and the rank stability of sampled shuffles across seeds (Spearman) against the closed form.

    python benchmarks/importance_cost.py --model resnet56            # untrained zoo model: timing
    python benchmarks/importance_cost.py --model runs/r20.pt          # a trained checkpoint
Writes benchmarks/results/importance_cost_<name>.{md,json}.
"""
import argparse
import itertools
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

import convslim
from convslim.checkpoint import example_input
from convslim.pruning.importance import loop_importance, permutation_importance
from convslim.pruning.prune import calibration_batches
from convslim.pruning.retention import coupled_groups
from convslim.graph import build_graph
from common import CIFAR, markdown_table, write_results


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet56", help="zoo name or a saved .pt")
    ap.add_argument("--data", default=f"cifar10:{CIFAR}")
    ap.add_argument("--calib-batches", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=5, help="seeds for the sampled-shuffle stability")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    splits = convslim.load_data(args.data)
    if args.model.endswith(".pt"):
        model = convslim.load(args.model)
    else:
        model = convslim.build_model(args.model, num_classes=splits.num_classes, input_shape=splits.input_shape)
    model.eval()
    xs, _ = calibration_batches(splits, args.calib_batches, args.batch_size)
    graph = build_graph(model, example_input(model))
    layers = sorted({layer for g in coupled_groups(model, graph) for layer in g.layers})
    channels = sum(dict(model.named_modules())[n].weight.shape[0] for n in layers)

    loop, t_loop = timed(lambda: {n: loop_importance(model, n, xs, perm="shuffle", seed=0) for n in layers})
    fast, t_fast = timed(lambda: permutation_importance(model, layers, xs, perm="shuffle", estimator="sample",
                                                        measure="conv", seed=0))
    closed, t_closed = timed(lambda: permutation_importance(model, layers, xs, perm="shuffle", estimator="expected",
                                                            measure="conv"))
    max_rel = max(((loop[n] - fast[n]).abs().max() / loop[n].abs().max().clamp(min=1e-12)).item() for n in layers)

    draws = [permutation_importance(model, layers, xs, estimator="sample", measure="conv", seed=s)
             for s in range(args.seeds)]
    closed_again = permutation_importance(model, layers, xs, estimator="expected", measure="conv")

    def mean_rho(pairs):
        rhos = [spearmanr(a[n].numpy(), b[n].numpy()).statistic for a, b in pairs for n in layers]
        return sum(rhos) / len(rhos)

    between_seeds = mean_rho(itertools.combinations(draws, 2))
    seed_vs_closed = mean_rho((d, closed) for d in draws)
    closed_repeat = mean_rho([(closed, closed_again)])

    name = Path(args.model).stem
    result = {"model": args.model, "layers": len(layers), "channels": channels,
              "images": sum(x.shape[0] for x in xs), "threads": torch.get_num_threads(),
              "seconds": {"per_channel_loop": t_loop, "one_forward_per_layer": t_fast, "closed_form": t_closed},
              "loop_vs_one_forward_max_rel_diff": max_rel,
              "spearman": {"sampled_between_seeds": between_seeds, "sampled_vs_closed_form": seed_vs_closed,
                           "closed_form_repeat": closed_repeat}}
    rows = [["(a) per-channel loop (thesis)", f"{t_loop:.2f}", "1.00x"],
            ["(b) one forward per layer, sampled shuffle R=1", f"{t_fast:.2f}", f"{t_loop / t_fast:.1f}x"],
            ["(c) closed-form expectation", f"{t_closed:.2f}", f"{t_loop / t_closed:.1f}x"]]
    weights = "trained checkpoint" if args.model.endswith(".pt") else \
        "untrained zoo weights: the timings hold, the rank stability is only indicative"
    md = (f"# Importance cost: {args.model}\n\n"
          f"Command: `python benchmarks/importance_cost.py --model {args.model}`. {len(layers)} layers, "
          f"{channels} channels, {result['images']} calibration images, {result['threads']} torch threads, "
          f"{weights}.\n\n"
          + markdown_table(["method", "seconds", "speed-up over (a)"], rows)
          + f"\n\n(a) and (b) agree to a max relative difference of {max_rel:.1e} (same permutations).\n\n"
          + markdown_table(["rank stability (mean Spearman over layers)", "rho"],
                           [[f"sampled shuffle R=1, between {args.seeds} seeds", f"{between_seeds:.3f}"],
                            ["sampled shuffle R=1 against the closed form", f"{seed_vs_closed:.3f}"],
                            ["closed form, repeated", f"{closed_repeat:.3f}"]]))
    write_results(f"importance_cost_{name}", result, md)


if __name__ == "__main__":
    main()

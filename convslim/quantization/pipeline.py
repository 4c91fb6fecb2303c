"""Deep Compression (seed 002 section 1.5): prune -> cluster -> Huffman, with the size at each stage.

- prune: convslim's channel pruner at a cumulative contribution rate `cr` (a genuinely smaller
  model), BatchNorm statistics re-estimated, then fine-tuned;
- cluster: k-means weight sharing per layer, centroids fine-tuned (summed cluster gradients);
- huffman: the shared-weight indices Huffman-coded in the compressed file.
Sizes are bytes of real files: the fp32 state dict (what a .pt holds) before and after pruning,
the coded file with fixed-width indices after clustering, and with Huffman-coded indices last.
"""
from ..errors import ConvslimError
from ..metrics import count, state_dict_bytes
from ..checkpoint import example_input
from .methods import DEFAULT_LR, FineTune, top1
from .storage import coded_sizes

STAGES = ("prune", "cluster", "huffman")


def parse_pipeline(text):
    """'prune,cluster,huffman' -> a list of stages, in Deep Compression's order, each at most once."""
    stages = [s.strip() for s in str(text).split(",") if s.strip()]
    if not stages:
        raise ConvslimError("--pipeline is empty; use e.g. prune,cluster,huffman")
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConvslimError(f"unknown pipeline stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
    if len(set(stages)) != len(stages) or stages != sorted(stages, key=STAGES.index):
        raise ConvslimError(f"pipeline stages must appear once each, in the order {','.join(STAGES)}")
    if "huffman" in stages and "cluster" not in stages:
        raise ConvslimError("the huffman stage codes cluster indices; put cluster before it")
    return stages


def _prune_stage(model, splits, cr, finetune):
    try:
        from ..pruning.prune import prune
    except ImportError as exc:
        raise ConvslimError(f"the prune stage needs convslim.pruning.prune, which cannot be imported ({exc})") from exc
    from ..train import recalibrate_bn

    if not 0 < cr <= 1:
        raise ConvslimError(f"--cr must be in (0, 1], got {cr}")
    slim, kept = prune(model, splits, cr=cr, seed=finetune.seed)
    recalibrate_bn(slim, splits, device="cpu")
    finetune.run(slim, splits)
    return slim.cpu().eval(), kept


def deep_compression(model, splits, stages, *, cr=0.9, clusters=16, epochs=3, lr=None, teacher=None, seed=0,
                     progress=True):
    """Run the stages on a copy of `model`; returns (final model, per-stage rows, summary).

    The final model is the pruned plain model when no cluster stage runs, else the clustered one
    (save it with `storage.save_compressed`, Huffman coding when the huffman stage is listed).
    """
    from .clustering import cluster

    stages = parse_pipeline(",".join(stages) if isinstance(stages, (list, tuple)) else stages)
    base_bytes = state_dict_bytes(model)
    rows = [{"stage": "original", "params": count(model, example_input(model))["params"], "bytes": base_bytes,
             "ratio": 1.0, "top1": top1(model, splits)}]
    current = model
    if "prune" in stages:
        ft = FineTune(epochs, lr=lr or DEFAULT_LR["lowbit"], teacher=teacher, seed=seed, progress=progress)
        current, kept = _prune_stage(model, splits, cr, ft)
        b = state_dict_bytes(current)
        rows.append({"stage": f"prune (cr {cr})", "params": count(current, example_input(current))["params"],
                     "bytes": b, "ratio": base_bytes / b, "top1": top1(current, splits)})
    if "cluster" in stages:
        sim = cluster(current, clusters, seed=seed)
        FineTune(epochs, lr=lr or DEFAULT_LR["cluster"], teacher=teacher, seed=seed, progress=progress).run(sim, splits)
        sizes = coded_sizes(sim)
        acc = top1(sim, splits)
        params = rows[-1]["params"]
        rows.append({"stage": f"cluster (k={clusters})", "params": params, "bytes": sizes["packed"],
                     "ratio": base_bytes / sizes["packed"], "top1": acc})
        if "huffman" in stages:
            rows.append({"stage": "huffman", "params": params, "bytes": sizes["huffman"],
                         "ratio": base_bytes / sizes["huffman"], "top1": acc})
        current = sim
    return current, rows, {"stages": stages, "cr": cr, "clusters": clusters, "epochs": epochs}

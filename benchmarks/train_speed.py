"""Train resnet20 on the CIFAR-10 tarball for a short budget: accuracy, images/s for training and
evaluation, and the share of a training step spent outside forward/backward (data overhead).

Also compares the memory format side by side in the same run (channels_last against contiguous
for a fixed number of steps), as a ratio.

    python benchmarks/train_speed.py --epochs 3            # writes benchmarks/results/train_speed.*
"""
import argparse
import time


import convslim
from convslim.train import TrainConfig
from common import CIFAR, markdown_table, write_results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=f"cifar10:{CIFAR}")
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--compare-steps", type=int, default=60)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    t0 = time.perf_counter()
    splits = convslim.load_data(args.data)
    load_s = time.perf_counter() - t0
    formats = {}
    for channels_last in (True, False):
        model = convslim.build_model(args.model, num_classes=splits.num_classes, input_shape=splits.input_shape)
        log = convslim.fit(model, splits, TrainConfig(epochs=1, max_steps=args.compare_steps, device=args.device,
                                                      channels_last=channels_last, progress=False), validate=False)
        formats["channels_last" if channels_last else "contiguous"] = log["epochs"][0]["train_images_per_s"]

    model = convslim.build_model(args.model, num_classes=splits.num_classes, input_shape=splits.input_shape)
    log = convslim.fit(model, splits, TrainConfig(epochs=args.epochs, device=args.device))
    test = convslim.evaluate(model, splits, "test", batch_size=256)
    ips = [e["train_images_per_s"] for e in log["epochs"]]
    result = {"model": args.model, "data": args.data, "epochs": args.epochs, "data_load_seconds": load_s,
              "train_seconds": log["seconds"], "val_acc": log["epochs"][-1]["val_acc"], "test_acc": test["top1"],
              "test_top5": test["top5"], "train_images_per_s": sum(ips) / len(ips),
              "eval_images_per_s": test["images_per_s"], "data_overhead": log["data_overhead"],
              "format_images_per_s": formats, "epochs_log": log["epochs"]}
    rows = [[args.model, args.epochs, f"{test['top1']:.2f}", f"{result['val_acc']:.2f}",
             f"{result['train_images_per_s']:.0f}", f"{test['images_per_s']:.0f}",
             f"{100 * log['data_overhead']:.2f}%", f"{log['seconds']:.0f}",
             f"{formats['channels_last'] / formats['contiguous']:.2f}x"]]
    md = ("# Training speed (CIFAR-10, CPU unless stated)\n\n"
          f"Command: `python benchmarks/train_speed.py --epochs {args.epochs}`; recipe: SGD nesterov, lr 0.1, "
          "cosine, wd 5e-4, batch 128, random crop + flip as tensor ops.\n\n"
          + markdown_table(["model", "epochs", "test top-1 %", "val top-1 %", "train img/s", "eval img/s",
                            "data overhead", "train s", "channels_last / contiguous img/s"], rows)
          + f"\n\nData load (decoded cache): {load_s:.1f} s. Data overhead = time waiting for a batch "
            "(gather, crop/flip, normalise) over the whole step time.")
    write_results("train_speed", result, md)


if __name__ == "__main__":
    main()

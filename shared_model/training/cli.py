"""``fer-train``: train, evaluate and fine-tune the FER network."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

try:
    import torch
except ModuleNotFoundError as missing:  # the base install is the torch-free edge
    raise SystemExit("fer-train needs PyTorch: pip install 'fer-split[full]'") from missing

from ..checkpoint import (
    CheckpointError, default_weights_path, load_checkpoint, load_model, model_fingerprint, save_checkpoint, select_device,
)
from ..cli_help import DefaultsHelpFormatter
from ..config import ModelConfig
from .datasets import ClassMatch, DatasetError, FaceDataset, copies_in, load_dataset, load_dataset_for_model, parse_class_map
from .calibration import calibration_holdout, fit_temperature_on, plot_reliability
from .evaluation import FLIP_TTA, SINGLE_CROP, ClassificationReport, Evaluation, evaluations, predict_scores, view_probabilities
from .export import TRITON_BACKENDS, TRITON_FEATURES
from .fit import RECIPES, TrainSettings, chain_runs, check_resumable, fit, initial_model, plot_curves, read_log

__all__ = ["build_parser", "plot_confusion", "main"]

VIEW_TITLES = {SINGLE_CROP: "single crop", FLIP_TTA: "flip TTA (mean with the mirror image)"}

DISTILLATION_WEIGHT = 0.5  # with --teacher: labels and teachers weigh alike unless told otherwise

EXAMPLES = """examples:
  fer-train fit --data ../shared/data/fer2013 --out runs/fer2013
  fer-train fit --data fer2013.csv --out runs/csv --recipe paper
  fer-train fit --data ../shared/data/fer2013 --out runs/more --init-weights runs/fer2013/best.pt \\
      --schedule 224:6 --lr 0.03
  fer-train fit --data ../shared/data/fer2013 --out runs/distil --init-weights runs/fer2013/best.pt \\
      --teacher runs/fer2013/best.pt --schedule 112:30,224:4   # distil from a teacher's soft labels
  fer-train calibrate --data ../shared/data/fer2013 --weights runs/fer2013/best.pt --out cal.pt
  fer-train eval --data ../shared/data/fer2013/public_test --reliability reliability.png
  fer-train eval --data fer2013.csv --split public_test --json
  fer-train eval --data ck+/ --class-map joy=happy,calm=neutral   # other datasets
  fer-train ablate --data ../shared/data/fer2013                  # the paper's ablations, 2 seeds
  fer-train finetune --data rafd/ --weights runs/fer2013/best.pt --out runs/rafd
  fer-train info                        # which weights, how they were trained and calibrated
  fer-train curves runs/fer2013/log.csv runs/more/log.csv --out curves.png   # runs end to end
  fer-train export --out exported/      # ONNX + TorchScript of every part; Triton repository
  fer-train export --out exported/ --parts cloud --formats onnx --triton-features fp32
"""


def _add_data_arguments(parser: argparse.ArgumentParser, split_help: str) -> None:
    parser.add_argument("--data", required=True, type=Path, help="FER2013 CSV, or a folder of class subfolders (or of split folders holding them)")
    parser.add_argument("--split", help=split_help)


def _add_training_arguments(
    parser: argparse.ArgumentParser, defaults: TrainSettings, out: Path | None = None, phases: bool = True, seed: bool = True,
) -> None:
    """The options every training command shares; ``phases`` adds the phased recipe's, ``seed`` the single seed."""
    parser.add_argument("--out", required=out is None, default=out, type=Path, help="run folder: checkpoints, log.csv, curves.png")
    parser.add_argument("--val-split", default="public_test", help="validation split: CSV Usage or subfolder")
    parser.add_argument("--train-split", default="train", help="training split: CSV Usage or subfolder")
    if phases:
        parser.add_argument("--schedule", default=defaults.schedule, help="SIZE:EPOCHS phases, e.g. 112:60,224:10")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="faces per optimizer step")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak (phased) or initial (paper) learning rate")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                        help="L2 penalty on the weights (not on biases or normalization)")
    parser.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing,
                        help="share of each target spread evenly over the classes")
    if phases:
        parser.add_argument("--later-phase-lr", type=float, default=defaults.later_phase_lr,
                            help="peak learning rate of each phase after the first, as a fraction of --lr (a fine-tune)")
        parser.add_argument("--ema-decay", type=float, default=defaults.ema_decay,
                            help="per-step decay of the averaged weights that are validated and shipped (0: none)")
    parser.add_argument("--calibration-fraction", type=float, default=defaults.calibration_fraction,
                        help="fraction of every training class never trained on: fer-train calibrate fits the "
                        "temperature there")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="draws the initial weights, data order and augmentation")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads (default: all cores)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--max-steps-per-epoch", type=int, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fer-train", description="Train, evaluate and fine-tune the split FER network.", epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _add_fit_command(commands)
    _add_eval_command(commands)
    _add_finetune_command(commands)
    _add_ablate_command(commands)
    _add_calibrate_command(commands)
    _add_info_command(commands)
    _add_curves_command(commands)
    _add_export_command(commands)
    return parser


def _add_fit_command(commands: Any) -> None:
    fit_parser = commands.add_parser("fit", help="train from scratch", formatter_class=DefaultsHelpFormatter)
    fit_parser.add_argument("--data", required=True, type=Path, help="FER2013 CSV or a folder with train/ and public_test/")
    fit_parser.add_argument(
        "--recipe", choices=RECIPES, default="phased",
        help="phased: phases of --schedule, each warmed up then cosine-decayed, with augmentation, label smoothing and "
        "an averaged copy of the weights that is what ships; paper: SGD 0.1 divided by 10 every 30 epochs, 100 "
        "epochs at 224, no averaging",
    )
    origin = fit_parser.add_mutually_exclusive_group()  # a checkpoint brings its own config
    origin.add_argument("--config", type=Path, help="model config JSON (default: the default config)")
    origin.add_argument("--init-weights", type=Path, help="start from this checkpoint's weights and config, e.g. to train the shipped model longer at 224")
    defaults = TrainSettings()
    fit_parser.add_argument(
        "--teacher", action="append", dest="teachers", type=Path, metavar="CHECKPOINT",
        help="distil from this checkpoint (repeat for an ensemble): the loss also pulls the student towards the "
        "teachers' probabilities for each face, computed once before training (with the mirror image) and kept "
        "in --out",
    )
    fit_parser.add_argument("--distillation-weight", type=float,
                            help=f"with --teacher: share of the loss given to the teachers' probabilities, the rest "
                            f"going to the labels (default: {DISTILLATION_WEIGHT})")
    fit_parser.add_argument("--distillation-temperature", type=float,
                            help="with --teacher: divides the teachers' raw and the student's class scores, so that "
                            "the classes a teacher finds nearly as likely also teach "
                            f"(default: {defaults.distillation_temperature})")
    _add_training_arguments(fit_parser, defaults)


def _add_eval_command(commands: Any) -> None:
    eval_parser = commands.add_parser(
        "eval", formatter_class=DefaultsHelpFormatter,
        help="accuracy with its 95%% interval, per-class recall, macro F1, calibration error, confusion",
        description="Evaluate on the classes the data holds. Class folders match the model's classes by name (case "
        "aside) or by a common synonym (anger/angry, disgusted/disgust, fearful or afraid/fear, happiness/happy, "
        "sadness/sad, surprised/surprise, contemptuous/contempt); other folders, and model classes without a "
        "folder, are left out and listed. Accuracy is reported twice: the prediction over all the model's classes, "
        "and the prediction restricted to the classes present in the data. Every figure is given for the single crop "
        "(what every strategy answers) and for flip TTA (the mean with the mirror image). Accuracies carry their "
        "95% Wilson interval; ECE is the expected calibration error over 15 equal-width confidence bins, with its 95% "
        "bootstrap interval.",
    )
    _add_data_arguments(eval_parser, "CSV Usage (train, public_test, private_test) or subfolder of --data")
    eval_parser.add_argument(
        "--class-map", metavar="MAP",
        help="which model class each data class is, beyond the built-in synonyms: FOLDER=CLASS[,FOLDER=CLASS...] "
        "(e.g. calm=neutral,joy=happy; FOLDER= leaves a folder out) or a JSON file {\"FOLDER\": \"CLASS\"}",
    )
    eval_parser.add_argument("--weights", type=Path, help="checkpoint (default: the shipped weights)")
    eval_parser.add_argument(
        "--without-copies-in", type=Path, metavar="TRAIN",
        help="the training data (a folder of class subfolders, or a FER2013 CSV: its Training rows): every figure is "
        "given again without the faces that are pixel for pixel one of its faces, which measure memory, not skill",
    )
    eval_parser.add_argument("--flip-tta", action="store_true", help=argparse.SUPPRESS)  # accepted: both views are always reported
    eval_parser.add_argument("--size", type=int, help="input size (default: the model's, 224)")
    eval_parser.add_argument("--plot", type=Path, help="write the confusion matrix (single crop) as PNG here")
    eval_parser.add_argument("--reliability", type=Path, help="write the reliability diagram (both views) as PNG here")
    eval_parser.add_argument("--json", action="store_true", help="print one JSON object (accuracy in [0, 1])")
    eval_parser.add_argument("--threads", type=int, default=os.cpu_count())


def _add_finetune_command(commands: Any) -> None:
    finetune_parser = commands.add_parser("finetune", help="transfer to another dataset: new output layer, constant lr 0.001",
                                             formatter_class=DefaultsHelpFormatter)
    finetune_parser.add_argument("--data", required=True, type=Path, help="folder with train/ and a validation subfolder, each of class subfolders")
    finetune_parser.add_argument("--weights", type=Path, help="starting checkpoint (default: the shipped weights)")
    finetune_parser.add_argument("--epochs", type=int, default=10, help="epochs at the model's input size")
    defaults = TrainSettings(lr=0.001, label_smoothing=0.0)
    _add_training_arguments(finetune_parser, defaults, phases=False)
    finetune_parser.set_defaults(val_split="val")


def _add_ablate_command(commands: Any) -> None:
    ablate_parser = commands.add_parser(
        "ablate", help="the paper's Tables 2-3 and Figure 7: every row on one schedule, several seeds",
        formatter_class=DefaultsHelpFormatter,
        description="Train every ablation row with every seed on one identical schedule and report each row's mean "
        "validation accuracy, its spread between seeds, and whether its difference from the default network "
        "exceeds the spread of each (both rows need two seeds). Runs resume where they stopped.",
    )
    ablate_parser.add_argument("--data", type=Path, help="FER2013 CSV or a folder with train/ and public_test/ (required)")
    ablate_parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    ablate_parser.add_argument(
        "--row", action="append", dest="rows", metavar="NAME",
        help="train this row only; repeat for several, trained in the order given (default: every row; see "
        "--list-rows). The tables keep every run already finished in --out with the same settings",
    )
    ablate_parser.add_argument("--list-rows", action="store_true", help="print the rows and exit")
    ablate_parser.add_argument("--results", type=Path, default=Path("results/ablation"), help="folder for ablation.csv, ablation_runs.csv and the plot ablation.png")
    _add_training_arguments(ablate_parser, TrainSettings(schedule="112:12"), out=Path("runs/ablation"), seed=False)


def _add_calibrate_command(commands: Any) -> None:
    calibrate_parser = commands.add_parser(
        "calibrate", help="fit the temperature on the slice of the training split that training left out",
        description="Temperature scaling (Guo et al., ICML 2017): one number divides the class scores so that "
        "the top probability matches how often the top class is right; no prediction changes. It is fitted on "
        "the slice of the training split that `fer-train fit` held out (the fraction its provenance records), "
        "never on the validation split, and stored in the checkpoint's config, so every runtime and engine "
        "applies it once the weights are exported.",
    )
    calibrate_parser.add_argument("--data", required=True, type=Path, help="the data the weights were trained on")
    calibrate_parser.add_argument("--train-split", default="train", help="training split: CSV Usage or subfolder")
    calibrate_parser.add_argument("--weights", required=True, type=Path, help="checkpoint trained by fer-train fit")
    calibrate_parser.add_argument("--out", required=True, type=Path, help="the calibrated checkpoint")
    calibrate_parser.add_argument(
        "--fraction", type=float, help="held-out fraction (default: the one the weights' training recorded)"
    )
    calibrate_parser.add_argument("--json", action="store_true", help="print one JSON object")
    calibrate_parser.add_argument("--threads", type=int, default=os.cpu_count())


def _add_info_command(commands: Any) -> None:
    info_parser = commands.add_parser("info", help="a checkpoint's fingerprint, config, validation accuracy and training lineage")
    info_parser.add_argument("--weights", type=Path, help="checkpoint (default: the shipped weights)")
    info_parser.add_argument("--json", action="store_true", help="print the config and full provenance as one JSON object")


def _add_curves_command(commands: Any) -> None:
    curves_parser = commands.add_parser(
        "curves", help="draw the loss and accuracy curves of training logs, runs that each started from the one before "
        "drawn end to end", formatter_class=DefaultsHelpFormatter,
    )
    curves_parser.add_argument("logs", nargs="+", type=Path, metavar="LOG",
                               help="a run's log.csv; several: in the order the runs were trained")
    curves_parser.add_argument("--out", required=True, type=Path, help="PNG to write")


def _add_export_command(commands: Any) -> None:
    export_parser = commands.add_parser("export", help="ONNX and TorchScript of each partition (checked against PyTorch) and a Triton model repository of the three served models", formatter_class=DefaultsHelpFormatter)
    export_parser.add_argument("--weights", type=Path, help="checkpoint (default: the shipped weights)")
    export_parser.add_argument("--out", type=Path, default=Path("exported"), help="folder for {part}.onnx, {part}.pt, attention.npz (fer-cloud's fer_attention), model.json and triton/")
    export_parser.add_argument("--parts", default="cloud,head,tail,whole", help="comma-separated: cloud, head, tail, whole")
    export_parser.add_argument("--formats", default="onnx,torchscript", help="comma-separated: onnx, torchscript")
    triton = export_parser.add_argument_group("Triton model repository (OUT/triton: fer_attention, fer_rest, fer_classifier)")
    triton.add_argument("--triton", action="store_true", default=True, help="write the Triton model repository")
    triton.add_argument("--no-triton", dest="triton", action="store_false", default=argparse.SUPPRESS, help="skip the Triton model repository")
    triton.add_argument("--triton-backend", choices=TRITON_BACKENDS, default="python", help="python: this project's model code with ONNX Runtime inside (uint8 split tensors with scale/zero_point, JPEG/PNG faces, requested outputs; needs the project and onnxruntime in Triton's Python); onnxruntime: Triton's own backend, for GPU images (FP32 split tensors, raw pixels, attention outputs only)")
    triton.add_argument("--triton-features", choices=TRITON_FEATURES, default="uint8", help="datatype of the split tensor input (Triton takes one per input): uint8 is what fer-edge sends by default")
    triton.add_argument("--triton-max-batch-size", type=int, default=32, help="dynamic batching: largest batch")
    triton.add_argument("--triton-queue-delay-us", type=int, default=0, help="dynamic batching: how long a request may wait for others (0: batch only what is already queued; a delay holds a lone request for all of it)")
    triton.add_argument("--triton-instances", type=int, default=1, help="model instances per model (each a backend process)")
    triton.add_argument("--triton-device", choices=("cpu", "gpu"), default="cpu", help="instance kind: gpu runs ONNX Runtime's CUDA provider (needs onnxruntime-gpu in Triton's Python)")
    triton.add_argument("--triton-threads", type=int, default=1, help="ONNX Runtime threads per instance (python backend)")


def _provenance(args: argparse.Namespace, train: FaceDataset, val: FaceDataset) -> dict:
    return {
        "data": str(args.data),
        "train_split": args.train_split,
        "train_images": len(train),
        "validation_split": args.val_split,
        "validation_images": len(val),
        "torch": str(torch.__version__),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
    }


def _training_settings(args: argparse.Namespace, recipe: str) -> TrainSettings:
    """The TrainSettings that the training options of ``args`` ask for, in ``recipe``."""
    chosen = dict(
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
        later_phase_lr=args.later_phase_lr, calibration_fraction=args.calibration_fraction,
        seed=getattr(args, "seed", 0),  # ablate gives each run its seed from --seeds
        max_steps_per_epoch=args.max_steps_per_epoch,
    )
    if recipe == "paper":
        if args.schedule != TrainSettings().schedule:
            chosen["schedule"] = args.schedule
        return TrainSettings.paper(**chosen)
    return TrainSettings(schedule=args.schedule, ema_decay=args.ema_decay, **chosen)


def _run_fit(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    start = load_checkpoint(args.init_weights) if args.init_weights else None
    if start:
        config = start.config.replace(temperature=1.0)  # a temperature belongs to the weights it was fitted for
    else:
        config = ModelConfig.from_json(args.config.read_text()) if args.config else ModelConfig()
    train = load_dataset(args.data, args.train_split)
    val = load_dataset(args.data, args.val_split, class_names=train.class_names)
    config = config.replace(class_names=train.class_names)
    settings = _training_settings(args, args.recipe)
    if args.teachers:
        train, settings = _with_teachers(args, train, settings)
    elif args.distillation_weight is not None or args.distillation_temperature is not None:
        raise ValueError("--distillation-weight and --distillation-temperature need --teacher")
    model = initial_model(config, args.seed)
    provenance = _provenance(args, train, val)
    if start:
        model.load_state_dict(start.state_dict)
        provenance.update(initialized_from=start.fingerprint, parent=start.provenance)
    model = model.to(select_device(args.device))
    print(f"training {config.name} on {len(train)} images, validating on {len(val)}; run folder {args.out}", file=sys.stderr)
    state = fit(model, train, val, args.out, settings, provenance, resume=args.resume,
                on_epoch=lambda r: print(json.dumps(asdict(r)), file=sys.stderr))
    print(f"best validation accuracy {state.best_accuracy:.4f} at epoch {state.best_epoch}: {args.out / 'best.pt'}")
    return 0


def _with_teachers(args: argparse.Namespace, train: FaceDataset, settings: TrainSettings) -> tuple[FaceDataset, TrainSettings]:
    """The training faces with the soft labels of --teacher, and the settings that record the teachers."""
    from .distillation import check_teachers, soft_labels_for

    weight = DISTILLATION_WEIGHT if args.distillation_weight is None else args.distillation_weight
    temperature = settings.distillation_temperature if args.distillation_temperature is None else args.distillation_temperature
    if not 0.0 < weight <= 1.0:
        raise ValueError(f"--distillation-weight must be in (0, 1] with --teacher, got {weight}")
    if temperature <= 0:
        raise ValueError(f"--distillation-temperature must be positive, got {temperature}")
    teachers = [load_model(path, device=select_device(args.device))[0] for path in args.teachers]
    check_teachers(teachers, train.class_names)
    settings = replace(
        settings, distillation_weight=weight, distillation_temperature=temperature,
        teachers=tuple(sorted(model_fingerprint(teacher) for teacher in teachers)),
    )
    if args.resume:
        check_resumable(args.out, settings)  # before the teachers label every face, not after
    print(f"soft labels of {len(teachers)} teacher(s) for {len(train)} faces", file=sys.stderr)
    return soft_labels_for(teachers, train, temperature, args.out), settings


def _run_finetune(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    model, checkpoint = load_model(args.weights)
    train = load_dataset(args.data, args.train_split)
    val = load_dataset(args.data, args.val_split, class_names=train.class_names)
    model.replace_classifier(train.class_names)
    settings = TrainSettings.paper(
        schedule=f"{model.config.input_size}:{args.epochs}", lr=args.lr, step_epochs=10**9,
        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, batch_size=args.batch_size,
        seed=args.seed, max_steps_per_epoch=args.max_steps_per_epoch, calibration_fraction=args.calibration_fraction,
    )
    provenance = {**_provenance(args, train, val), "finetuned_from": checkpoint.fingerprint, "parent": checkpoint.provenance}
    state = fit(model.to(select_device(args.device)), train, val, args.out, settings, provenance, resume=args.resume)
    print(f"best validation accuracy {state.best_accuracy:.4f} at epoch {state.best_epoch}: {args.out / 'best.pt'}")
    return 0


def _interval(bounds: tuple[float, float]) -> str:
    return f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"


def _print_view(name: str, evaluation: Evaluation) -> None:
    report, restricted = evaluation.report, evaluation.restricted
    print(f"{name}")
    print(f"  accuracy  {report.accuracy:.4f} {_interval(report.accuracy_interval)}   macro F1  {report.macro_f1:.4f}   "
          f"ECE  {evaluation.ece:.4f}{' ' + _interval(evaluation.ece_interval) if evaluation.ece_interval else ''}   images  {report.count}   (prediction over all {len(report.class_names)} model classes)")
    if len(evaluation.present_classes) < len(report.class_names):
        print(f"  accuracy  {restricted.accuracy:.4f} {_interval(restricted.accuracy_interval)}   macro F1  "
              f"{restricted.macro_f1:.4f}   (prediction restricted to the {len(evaluation.present_classes)} classes present)")
    print("  recall    " + "  ".join(f"{n} {a:.3f}" for n, a in report.per_class_recall.items()))


def _print_report(views: dict[str, Evaluation], match: ClassMatch, title: str) -> None:
    print(title)
    for line in match.describe():
        print(line)
    for name, evaluation in views.items():
        _print_view(VIEW_TITLES[name], evaluation)
    report = views[SINGLE_CROP].report
    width = max(len(n) for n in report.class_names) + 2
    print("confusion matrix, single crop (rows: true, columns: predicted over all model classes)")
    print(" " * width + "".join(f"{n[:7]:>8}" for n in report.class_names))
    for name, row in zip(report.class_names, report.confusion):
        if name in views[SINGLE_CROP].present_classes:
            print(f"{name:<{width}}" + "".join(f"{v:>8}" for v in row))


def plot_confusion(report: ClassificationReport, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = torch.tensor(report.confusion, dtype=torch.float64)
    rates = matrix / matrix.sum(dim=1, keepdim=True).clamp(min=1)
    figure, axis = plt.subplots(figsize=(7, 6))
    image = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    names = report.class_names
    axis.set(xticks=range(len(names)), yticks=range(len(names)), xticklabels=names, yticklabels=names,
             xlabel="predicted", ylabel="true", title=title)
    plt.setp(axis.get_xticklabels(), rotation=45, ha="right")
    for i in range(len(names)):
        for j in range(len(names)):
            axis.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    figure.colorbar(image, ax=axis, label="fraction of true class")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _run_eval(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if args.flip_tta:
        print("fer-train: --flip-tta is retired: eval reports the single crop and flip TTA side by side", file=sys.stderr)
    model, checkpoint = load_model(args.weights)
    class_map = parse_class_map(args.class_map) if args.class_map is not None else None
    data, match = load_dataset_for_model(args.data, args.split, checkpoint.class_names, class_map, progress=not args.json)
    training = load_dataset(args.without_copies_in, progress=not args.json) if args.without_copies_in else None  # before the long pass
    probabilities = view_probabilities(model, data, args.size, progress=not args.json)
    views = evaluations(data.labels, probabilities, data.class_names)
    unseen = _without_copies(args.without_copies_in, training, data, probabilities) if training else None
    title = f"{args.data}{' [' + args.split + ']' if args.split else ''}  weights {checkpoint.fingerprint}"
    if args.plot:
        plot_confusion(views[SINGLE_CROP].report, args.plot, title)
    if args.reliability:
        args.reliability.parent.mkdir(parents=True, exist_ok=True)
        curves = {VIEW_TITLES[name]: view.reliability for name, view in views.items()}
        plot_reliability(curves, args.reliability, f"weights {checkpoint.fingerprint}, T={checkpoint.config.temperature:.3f}")
    if args.json:
        print(json.dumps({
            **views[SINGLE_CROP].to_dict(), FLIP_TTA: views[FLIP_TTA].to_dict(), **match.to_dict(),
            "data": str(args.data), "split": args.split, "weights": checkpoint.fingerprint,
            "temperature": checkpoint.config.temperature,
            **({"without_copies": unseen.to_dict()} if unseen else {}),
        }))
    else:
        _print_report(views, match, title)
        if unseen:
            left = unseen.views[SINGLE_CROP].report.count
            print(f"without the {unseen.copies} faces that are copies of faces in {unseen.reference} ({left} left)")
            for name, evaluation in unseen.views.items():
                _print_view(VIEW_TITLES[name], evaluation)
    return 0


@dataclass
class _Unseen:
    """The evaluation of the faces that are not copies of training faces."""

    reference: Path
    copies: int
    views: dict[str, Evaluation]

    def to_dict(self) -> dict[str, Any]:
        return {"reference": str(self.reference), "copies_left_out": self.copies, **self.views[SINGLE_CROP].to_dict(),
                FLIP_TTA: self.views[FLIP_TTA].to_dict()}


def _without_copies(reference: Path, training: FaceDataset, data: FaceDataset, probabilities: dict[str, torch.Tensor]) -> _Unseen:
    """Every view evaluated again on the faces of ``data`` that are no face of ``training`` (read from ``reference``)."""
    copies = torch.from_numpy(copies_in(data.images.numpy(), training.images.numpy()))
    keep = ~copies
    if not keep.any():
        raise ValueError(f"every face is a copy of a face in {reference}: none is left to evaluate")
    views = evaluations(data.labels[keep], {name: p[keep] for name, p in probabilities.items()}, data.class_names)
    return _Unseen(reference, int(copies.sum()), views)


def _run_ablate(args: argparse.Namespace) -> int:
    from .ablation import PLOT_FILE, ROWS, RowSummary, RunResult, finished_runs, plot_ablation, run_ablation, summarize, write_tables

    width = max(len(row.name) for row in ROWS)
    if args.list_rows:
        for row in ROWS:
            print(f"{row.name:<{width}}  {row.table}")
        return 0
    if args.data is None:
        raise ValueError("ablate needs --data (FER2013 CSV or a folder with train/ and public_test/)")
    torch.set_num_threads(args.threads)
    by_name = {row.name: row for row in ROWS}
    wanted = list(dict.fromkeys(name.strip() for name in args.rows)) if args.rows else list(by_name)
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise ValueError(f"unknown ablation rows {unknown}; see fer-train ablate --list-rows")
    rows = [by_name[name] for name in wanted]  # trained in the order given
    seeds = [int(seed) for seed in args.seeds.split(",")]
    train = load_dataset(args.data, args.train_split)
    val = load_dataset(args.data, args.val_split, class_names=train.class_names)
    settings = _training_settings(args, "phased")

    def write_all() -> tuple[Path, Path, list[RowSummary]]:
        """Both tables and the plot from every run finished in --out, this sitting's and earlier ones'."""
        results = finished_runs(args.out, settings, seeds)
        summaries = summarize(results)
        tables = write_tables(args.results, results, summaries)  # first: a failed plot must not cost the tables
        title = f"{args.val_split} accuracy per seed, schedule {settings.schedule}, seeds {args.seeds}"
        plot_ablation(args.results / PLOT_FILE, results, summaries, title)
        return (*tables, summaries)

    def record(result: RunResult) -> None:
        """Print the run and rewrite both tables, so that an interrupted ablation keeps what it finished."""
        print(json.dumps(asdict(result)), file=sys.stderr)
        write_all()

    run_ablation(train, val, args.out, settings, seeds, rows, device=select_device(args.device), on_run=record)
    runs_path, rows_path, summaries = write_all()
    print(f"{'row':<{width}}  {'table':<40} {'seeds':>5} {'accuracy':>9} {'spread':>7} {'vs default':>10}  beyond noise")
    for row in summaries:
        print(f"{row.row:<{width}}  {row.table:<40} {row.seeds:>5} {row.mean_accuracy:>9.4f} {row.spread:>7.4f} "
              f"{row.difference:>+10.4f}  {'yes' if row.beyond_noise else 'no'}")
    print(f"wrote {rows_path}, {runs_path} and {args.results / PLOT_FILE}", file=sys.stderr)
    return 0


def _run_calibrate(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    model, checkpoint = load_model(args.weights)
    recorded = checkpoint.provenance.get("recipe", {}).get("calibration_fraction")
    fraction = args.fraction if args.fraction is not None else recorded
    if not fraction:
        raise ValueError(f"{args.weights} records no held-out slice (trained on all of its data); give --fraction, "
                         "knowing that a slice the weights were trained on makes them look better calibrated than they are")
    train = load_dataset(args.data, args.train_split, progress=not args.json)
    _, held_out = calibration_holdout(train, fraction)
    if tuple(held_out.class_names) != tuple(checkpoint.class_names):
        raise ValueError(f"the data's classes ({', '.join(held_out.class_names)}) are not the model's, in its order "
                         f"({', '.join(checkpoint.class_names)})")
    recorded_images = checkpoint.provenance.get("calibration_images")
    if recorded_images is not None and recorded_images != len(held_out):
        raise ValueError(f"training held out {recorded_images} images, this data gives {len(held_out)}: it is not the "
                         "data the weights were trained on, and its slice may hold images they were trained on")
    scores = predict_scores(model, held_out, progress=not args.json)
    result = fit_temperature_on(scores, held_out.labels, checkpoint.config.temperature)
    model.calibrate(result.temperature)
    calibration = {**result.to_dict(), "data": str(args.data), "split": args.train_split, "fraction": fraction}
    save_checkpoint(model, args.out, {**checkpoint.provenance, "calibration": calibration})
    if args.json:
        print(json.dumps({"weights": args.out.name, "fingerprint": model_fingerprint(model), **calibration}))
    else:
        print(f"temperature {result.temperature:.4f} fitted on {result.images} held-out images of {args.data} "
              f"[{args.train_split}]: NLL {result.nll_before:.4f} -> {result.nll_after:.4f}, "
              f"ECE {result.ece_before:.4f} -> {result.ece_after:.4f}")
        print(f"wrote {args.out} (fingerprint {model_fingerprint(model)})")
    return 0


def _epochs(count: object) -> str:
    return f"{count} epoch{'' if count == 1 else 's'}"


def _describe_run(run: dict) -> str:
    recipe = run.get("recipe", {})
    start = run.get("initialized_from") or run.get("finetuned_from")
    accuracy = run.get("validation_accuracy")
    teachers = recipe.get("teachers")
    distilled = (f", distilled from {', '.join(teachers)} (weight {recipe.get('distillation_weight')}, "
                 f"temperature {recipe.get('distillation_temperature')})") if teachers else ""
    return (
        f"{recipe.get('recipe', '?')} schedule {recipe.get('schedule', '?')} peak lr {recipe.get('lr', '?')}"
        f"{' from ' + start if start else ' from scratch'}{distilled}: {_epochs(run.get('epochs_trained', '?'))}, "
        f"{run.get('validation_split', '?')} accuracy "
        f"{f'{accuracy:.4f}' if isinstance(accuracy, float) else '?'} at {run.get('validation_size', '?')}"
    )


def _run_info(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.weights or default_weights_path())
    if args.json:
        print(json.dumps({"fingerprint": checkpoint.fingerprint, "config": checkpoint.config.to_dict(), "provenance": checkpoint.provenance}))
        return 0
    runs = checkpoint.lineage()
    print(f"weights      {args.weights or 'shipped default'}  fingerprint {checkpoint.fingerprint}")
    print(f"network      {checkpoint.config.name}, input {checkpoint.config.input_size}, classes {', '.join(checkpoint.class_names)}")
    if not runs:
        print("training     no provenance recorded")
    else:
        for number, run in enumerate(runs, 1):
            print(f"run {number:<8} {_describe_run(run)}")
        epochs = sum(r.get("epochs_trained", 0) for r in runs)
        print(f"total        {_epochs(epochs)} on {runs[-1].get('data', '?')} ({runs[-1].get('machine', '?')})")
    calibration = checkpoint.provenance.get("calibration")
    if calibration:
        print(f"calibration  temperature {calibration['temperature']:.4f} fitted on {calibration['images']} held-out "
              f"images of {calibration.get('data', '?')} [{calibration.get('split', '?')}]: "
              f"ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} there")
    else:
        print(f"calibration  temperature {checkpoint.config.temperature:g} (none fitted)")
    return 0


def _run_curves(args: argparse.Namespace) -> int:
    history, run_starts = chain_runs([read_log(path) for path in args.logs])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot_curves(args.out, history, run_starts)
    best = max(history, key=lambda record: record.val_accuracy)
    print(f"wrote {args.out}: {_epochs(len(history))} in {len(args.logs)} run{'' if len(args.logs) == 1 else 's'}; "
          f"best validation accuracy {best.val_accuracy:.4f} at epoch {best.epoch} ({best.size}x{best.size})")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from .export import FORMATS, PARTS, ExportError, TritonSettings, export_all

    parts, formats = tuple(args.parts.split(",")), tuple(args.formats.split(","))
    unknown = [p for p in parts if p not in PARTS] + [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown parts or formats: {', '.join(unknown)}")
    settings = TritonSettings(
        backend=args.triton_backend, features=args.triton_features, max_batch_size=args.triton_max_batch_size,
        max_queue_delay_us=args.triton_queue_delay_us, instances=args.triton_instances, device=args.triton_device, threads=args.triton_threads,
    )
    checkpoint = load_checkpoint(args.weights or default_weights_path())
    try:
        exported = export_all(checkpoint, args.out, parts, formats, triton=args.triton, triton_settings=settings)
    except ExportError as error:
        raise ValueError(str(error)) from None
    for item in exported:
        print(f"{item.path}  ({item.part}, {item.format}, max |difference| from PyTorch {item.max_abs_error:.2e})")
    if args.triton:
        print(f"{args.out / 'triton'}  (Triton model repository, {settings.backend} backend: fer_attention, fer_rest, fer_classifier; fingerprint {checkpoint.fingerprint})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    handlers = {
        "fit": _run_fit, "eval": _run_eval, "calibrate": _run_calibrate, "ablate": _run_ablate, "finetune": _run_finetune,
        "info": _run_info, "curves": _run_curves, "export": _run_export,
    }
    try:
        return handlers[args.command](args)
    except (DatasetError, CheckpointError, ValueError) as error:
        print(f"fer-train: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

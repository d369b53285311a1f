"""`python -m pipeline <command>` (or `photo-pipeline <command>`): parses the command line and hands
each command to the module of its step; each Make target calls one command (`--help` lists them).
The one layer that says how a command is typed: the next steps messages name (pipeline.next_step)
read as `make ...` under the Makefile (PIPELINE_VIA=make), else as this program's own command line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from pipeline.config import ConfigError, DataConfig, PipelineError, VariantConfig, data_config, load_variant
from pipeline.data.competition import load_competition
from pipeline.files import DISK_FULL
from pipeline.leaderboard import Leaderboard
from pipeline.next_step import NextStep, render_with, shell_word, variant_word
from pipeline.weights import PUBLISHED

# The Makefile's variable for each option of a command (true flags as VAR=1); a step with any
# other option is shown as the `python -m pipeline` line even under make.
MAKE_VARIABLES = {
    "variant": "VARIANT", "data": "DATA", "channels": "CHANNELS", "csv": "CSV", "resume": "RESUME",
    "restart": "RESTART", "epochs": "EPOCHS", "max_steps": "MAX_STEPS", "variants": "VARIANTS",
    "competition": "COMPETITION", "sweep": "SWEEP", "only": "ONLY", "all": "ALL", "force": "FORCE",
    "host": "HOST", "port": "PORT", "name": "NAME", "apply": "APPLY",
}


def render_step(step: NextStep) -> str:
    """How a person types `step`: `make <target> VAR=...` when this process was started by the
    Makefile (PIPELINE_VIA=make), else the command line of this program (`python -m pipeline`,
    or `photo-pipeline` when installed and run under that name)."""
    if os.environ.get("PIPELINE_VIA") == "make":
        words = [step.command]
        for key, value in step.options.items():
            if value is None or value is False:
                continue
            if key == "param" and str(value).startswith("checkpoint="):
                words.append("CKPT=" + shell_word(str(value).partition("=")[2]))
            elif key in MAKE_VARIABLES:
                words.append(f"{MAKE_VARIABLES[key]}=" + ("1" if value is True else shell_word(str(value))))
            else:
                break
        else:
            return "make " + " ".join(words)
    program = "photo-pipeline" if Path(sys.argv[0]).name == "photo-pipeline" else "python -m pipeline"
    return f"{program} {step.command_line()}"


def _apply_params(variant: VariantConfig, items: list[str] | None) -> VariantConfig:
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r}: expected key=value")
        try:
            variant.params[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--param {item}: the value is not valid YAML ({exc})") from None
        variant.overrides[key] = value
    return variant


def _with_channels(data: DataConfig, args) -> DataConfig:
    if getattr(args, "channels", None):
        data.channels = args.channels
    return data


def _variant(args) -> VariantConfig:
    variant = _apply_params(load_variant(args.variant, data_root=args.data), getattr(args, "param", None))
    _with_channels(variant.data, args)
    return variant


def _data_config(args) -> DataConfig:
    """The competition settings of --variant (with --data over its root), else the defaults."""
    if getattr(args, "variant", None):
        return _with_channels(load_variant(args.variant, data_root=args.data).data, args)
    if args.data:
        data = data_config({"root": args.data, "truth": None if Path(args.data) != DataConfig.root else DataConfig.truth})
        return _with_channels(data, args)
    return _with_channels(DataConfig(), args)


def cmd_sample(args) -> None:
    from pipeline.data.competition import holds_other_layout
    from pipeline.data.sample import build_sample

    cfg = DataConfig()
    old_layout = holds_other_layout(cfg.root)
    if old_layout:
        print(f"note: {cfg.root} holds a sample in an older layout; rebuilding it", file=sys.stderr)
    build_sample(cfg, seed=args.seed, force=args.force or old_layout)
    _describe(load_competition(cfg))
    print(f"truth of the test images in {cfg.truth}")


def _describe(competition) -> None:
    from pipeline.submission import submission_spec

    print(competition.describe())
    print(submission_spec(competition).describe())


def cmd_data(args) -> None:
    from pipeline.data.download import download_competition
    from pipeline.kaggle import check_slug

    check_slug(args.competition)
    dest = Path("data/raw") / args.competition
    download_competition(args.competition, dest, force=args.force)
    _describe(load_competition(data_config({"root": dest, "truth": None})))
    print(f"next: {NextStep('submit', {'variant': 'telea', 'data': dest})}")


def cmd_weights(args) -> None:
    from pipeline.weights import WEIGHTS_DIR, download_weights

    path = download_weights(args.name, Path(args.dir or WEIGHTS_DIR), url=args.url, md5=args.md5, force=args.force)
    variant = "lama" if args.name == "big-lama" else args.name
    print(f"{path}: ready")
    if Path(args.dir or WEIGHTS_DIR) == WEIGHTS_DIR:
        print(f"next: {NextStep('submit', {'variant': variant})}")


def cmd_predict(args) -> None:
    from pipeline.inpainters.base import preflight
    from pipeline.predict import load_competition_once, process_state, variant_lock
    from pipeline.submit import predict_splits

    variant = _variant(args)
    preflight(variant)
    state = process_state()
    competition = load_competition_once(variant.data, state=state)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    for split in [s for s in splits if s in ("val", "test") and not competition.split(s)]:
        if state.is_main_process:
            print(f"note: the {split} split is empty (data.val_count = 0?); skipped", file=sys.stderr)
    splits = [s for s in splits if s not in ("val", "test") or competition.split(s)]
    with variant_lock(variant.name, competition, state=state):  # the main process alone takes it
        runs = predict_splits(variant, competition, splits)
    if not state.is_main_process:  # under accelerate launch, one report is enough
        return
    for split, run in runs.items():
        print(f"{variant.name} {split}: {run.images} images -> {run.folder} "
              f"({run.seconds_per_image:.4f} s/image)")


def _print_entry(variant: VariantConfig, entry: dict) -> None:
    print(f"{entry['submission']}: {entry['rows']} values, validated, sha256 {entry['sha256'][:12]}; "
          f"format {entry['format']}, channels {entry['channels']}, {entry['values']} values")
    if entry["val_rmse"] is not None:
        print(f"{variant.name}: validation RMSE {entry['val_rmse']:.4f} ({entry['val_rmse_255']:.2f}/255), "
              f"PSNR {entry['val_psnr']:.2f} dB, SSIM {entry['val_ssim']:.4f}")
    if entry["test_rmse"] is not None:
        print(f"{variant.name}: test RMSE against the sample's truth {entry['test_rmse']:.4f}")


def cmd_submit(args) -> None:
    from pipeline.inpainters.base import preflight
    from pipeline.predict import load_competition_once
    from pipeline.submit import submit_variant

    variant = _variant(args)
    preflight(variant)
    competition = load_competition_once(variant.data)
    run_dir = Path("runs") / variant.name  # a trained variant's TensorBoard folder
    entry = submit_variant(variant, competition, Leaderboard(), run_dir=str(run_dir) if run_dir.is_dir() else None)
    if entry:
        _print_entry(variant, entry)


def cmd_train(args) -> None:
    from pipeline.train import train

    variant = _variant(args)
    result = train(variant, resume=args.resume, restart=args.restart, epochs=args.epochs,
                   max_steps=args.max_steps, num_workers=args.workers)
    if not result.is_main_process:  # under accelerate launch, one report is enough
        return
    best = f"{result.best_val_rmse:.4f}" if result.best_val_rmse is not None else "n/a"
    print(f"{variant.name}: {result.steps} steps, {result.epochs_done} epochs in {result.seconds:.0f} s "
          f"(stopped: {result.stop_reason}); "
          f"best validation RMSE {best} -> {result.best}; run state {result.last}; TensorBoard {result.run_dir}")
    print(f"next: {NextStep('submit', {'variant': variant_word(variant), 'data': args.data})}")


def cmd_sd(args) -> None:
    """Every variant of a sweep (or one variant): checks first, then one submission each."""
    from pipeline.sweep import run_sweep, sweep_variants

    variants = sweep_variants(args.sweep, args.variant, args.only, data_root=args.data)
    for variant in variants:
        _apply_params(variant, args.param)
        _with_channels(variant.data, args)
    leaderboard = Leaderboard()
    if run_sweep(variants, leaderboard, on_entry=_print_entry) is not None:  # the main process reports
        print(leaderboard.format(variants=[v.name for v in variants]))


def cmd_blend(args) -> None:
    from pipeline.blend import format_fit, make_blend

    parts = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:  # the competition settings of the first part's config, when it has one in configs/
        data = _with_channels(load_variant(parts[0], data_root=args.data).data, args)
    except (ConfigError, IndexError):
        data = _data_config(args)
    _, variant, config, entry = make_blend(parts, data, Leaderboard(), name=args.name, per_channel=args.per_channel,
                                           on_fit=lambda fit: print(format_fit(fit)))
    _print_entry(variant, entry)
    print(f"{variant.name}'s config is {config}: next `{NextStep('score', {'variant': config})}`, or "
          f"`{NextStep('kaggle-submit', {'variant': config, 'competition': '<slug>'})}`")


def cmd_validate(args) -> None:
    from pipeline.submission import SubmissionError, validate_submission

    competition = load_competition(_data_config(args), check_images=False)
    try:
        result = validate_submission(Path(args.csv), competition)
    except SubmissionError as exc:
        other = Leaderboard().written_for_other_data(Path(args.csv), competition.root)
        if other:  # its ids name other boxes: say whose they are
            step = NextStep("validate", {"csv": args.csv, "data": "<that folder>"})
            raise SubmissionError(f"{other}: validate it there (`{step}`), or write it for this data ({exc})") from None
        raise
    print(f"{result.path}: OK, {result.rows} values, sha256 {result.sha256}")


def cmd_score(args) -> None:
    from pipeline.score import score_csv, score_variant

    if args.csv:
        competition = load_competition(_data_config(args), check_images=False)
        scores = score_csv(Path(args.csv), competition)
        where = f"{args.csv} against {competition.config.truth}"
    elif args.variant:
        variant = _variant(args)
        scores = score_variant(variant.name, load_competition(variant.data), data_root=args.data)
        where = f"{variant.name} on the validation split"
    else:
        raise ConfigError("score needs --variant NAME (validation split) or --csv FILE (test truth)")
    print(f"{where}: RMSE {scores.rmse:.4f} ({scores.rmse_255:.2f}/255), PSNR {scores.psnr:.2f} dB, "
          f"SSIM {scores.ssim:.4f}, {scores.images} images")
    for label, value in scores.rmse_by_class.items():
        print(f"  {label:12s} RMSE {value:.4f}")
    if args.json:
        print(json.dumps(scores.as_dict()))


def cmd_leaderboard(args) -> None:
    split = None
    if args.data:
        from pipeline.score import split_fingerprint

        split = split_fingerprint(load_competition(_data_config(args), check_images=False), "val")
    print(Leaderboard().format(all_rows=args.all, split=split))


def cmd_verdict(args) -> None:
    from pipeline.verdict import format_verdict, verdict

    split = None
    if args.data:
        from pipeline.score import split_fingerprint

        split = split_fingerprint(load_competition(_data_config(args), check_images=False), "val")
    print(format_verdict(verdict(Leaderboard(), split=split)))


def cmd_prune(args) -> None:
    from pipeline.prune import apply_prune, format_plan, plan_prune

    leaderboard = Leaderboard()
    plan = plan_prune(leaderboard)
    applied = apply_prune(plan, leaderboard) if args.apply else None
    print(format_plan(plan, applied, apply_step=NextStep("prune", {"apply": True})))


def cmd_compare(args) -> None:
    from pipeline.report import build_report

    variants = [v.strip() for v in (args.variants or "").split(",") if v.strip()] or None
    report = build_report(Leaderboard(), Path(args.out), variants, args.images, args.data)
    for name, note in report.notes.items():
        print(f"note: {name}: {note}", file=sys.stderr)
    print(f"{report.html} and {report.png}: {len(report.variants)} variant(s): {', '.join(report.variants)}")


def cmd_kaggle_submit(args) -> None:
    from pipeline import kaggle
    from pipeline.submit import upload_submission

    kaggle.check_slug(args.competition)
    variant = _variant(args)
    competition = load_competition(variant.data, check_images=False)
    row, found = upload_submission(variant, competition, args.competition, Leaderboard())
    csv = row["submission"]
    print(f"submitted {csv} to {args.competition} (channels {row['channels']}): ref {found.ref}, status {found.status}"
          + (f", public score {found.public_score}" if found.public_score is not None else ""))


def cmd_kaggle_scores(args) -> None:
    from pipeline import kaggle

    kaggle.check_slug(args.competition)
    leaderboard = Leaderboard()
    updated = leaderboard.update_from_kaggle(kaggle.list_submissions(args.competition))
    print(f"{updated} leaderboard row(s) updated from {args.competition}'s submissions")
    print(leaderboard.format())


# what the web app needs beyond the package's own dependencies: pyproject's `serve` extra
SERVE_EXTRA = ("gradio", "fastapi", "uvicorn", "starlette")


def cmd_serve(args) -> None:
    if args.max_pixels < 1:
        raise PipelineError(f"--max-pixels {args.max_pixels}: the largest photo accepted must be at least 1 pixel")
    try:
        from pipeline.serve import serve

        serve(data_root=args.data, host=args.host, port=args.port, max_pixels=args.max_pixels)
    except ModuleNotFoundError as exc:  # gradio is imported inside serve(), after the routes
        if (exc.name or "").split(".")[0] not in SERVE_EXTRA:
            raise
        raise PipelineError(
            f"the web app needs {exc.name}, which is not installed: install the package with its serve "
            f"extra, `pip install '.[serve]'` in a checkout (or `pip install '<folder or wheel>[serve]'`)"
        ) from exc


def cmd_duplicates(args) -> None:
    from pipeline.duplicates import duplicates_step

    competition = load_competition(_data_config(args))
    step = duplicates_step(competition, Path(args.out), max_rmse=args.max_rmse, rows=args.rows,
                           pairs=args.pairs, again=args.again)
    print(step.table)
    print(f"{step.file}: the matches ({'searched now' if step.searched else 'current, reused'}); {step.html}: the "
          f"closest pairs side by side")
    print(f"next: {NextStep('submit', {'variant': 'nearest', 'data': args.data})}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="One command per step of the flow: "
                                     "data -> predict -> submit (CSV, scores, leaderboard row) -> compare; "
                                     "`<command> --help` shows its options.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func, help: str, variant: bool = False, data: bool = True):
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        if variant:
            p.add_argument("--variant", required=True, help="configs/<name>.yaml or a YAML path")
            p.add_argument("--param", action="append", help="override a method parameter: key=value")
        if data:
            p.add_argument("--data", default=None, help="competition folder (default: the variant's data.root)")
            p.add_argument("--channels", choices=("rgb", "bgr"), default=None,
                           help="submission channel order: rgb (channel 0 = red) or bgr (default: the format's)")
        return p

    p = add("sample", cmd_sample, "build the offline sample competition", data=False)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if it exists")
    p = add("data", cmd_data, "download a Kaggle competition and validate it", data=False)
    p.add_argument("--competition", required=True, help="the competition's slug (from its URL)")
    p.add_argument("--force", action="store_true", help="download again even if present")
    p = add("weights", cmd_weights, "download a pretrained inpainter's published TorchScript file into weights/ "
            "(resumable, checksum verified)", data=False)
    p.add_argument("--name", required=True, choices=tuple(PUBLISHED), help="big-lama (LaMa) or migan (MI-GAN)")
    p.add_argument("--dir", help="folder to put it in (default: weights/)")
    p.add_argument("--url", help="a mirror to download from (default: the published release address)")
    p.add_argument("--md5", help="the mirror's MD5 (default: the published one)")
    p.add_argument("--force", action="store_true", help="download again even if the file is here")
    p = add("predict", cmd_predict, "predict the validation split and the test set", variant=True)
    p.add_argument("--splits", default="val,test")
    add("submit", cmd_submit, "predict, write and validate the submission CSV, score, record", variant=True)
    p = add("validate", cmd_validate, "validate a submission CSV before upload")
    p.add_argument("--csv", required=True)
    p.add_argument("--variant", help="take the competition settings (data:) from this variant's config")
    p = add("score", cmd_score, "score a variant (validation split) or a CSV (test truth)")
    p.add_argument("--variant", help="score this variant's validation predictions (with --csv: use its data settings)")
    p.add_argument("--csv")
    p.add_argument("--json", action="store_true", help="also print the scores as JSON")
    p = add("leaderboard", cmd_leaderboard, "print the leaderboard (latest row per variant, ranked per validation split)")
    p.add_argument("--all", action="store_true", help="every recorded submission")
    add("verdict", cmd_verdict, "which variant won on the validation split, by how much over Telea, and the next steps")
    p = add("prune", cmd_prune, "list the submission CSVs no one needs (not a variant's latest, never uploaded to "
            "Kaggle), stopped processes' temporaries and unheld lock files; --apply deletes them", data=False)
    p.add_argument("--apply", action="store_true", help="delete them (default: only list them and what is kept)")
    p = add("kaggle-submit", cmd_kaggle_submit, "upload a variant's CSV to Kaggle", variant=True)
    p.add_argument("--competition", required=True)
    p = add("kaggle-scores", cmd_kaggle_scores, "pull Kaggle public scores into the leaderboard", data=False)
    p.add_argument("--competition", required=True)
    p = add("train", cmd_train, "train a variant: best.pt/last.pt in checkpoints/<variant>/, logs in runs/<variant>/",
            variant=True)
    p.add_argument("--resume", action="store_true", help="continue checkpoints/<variant>/last.pt")
    p.add_argument("--restart", action="store_true", help="start over, replacing that run's checkpoints and logs")
    p.add_argument("--epochs", type=int, help="override params.epochs")
    p.add_argument("--max-steps", type=int, help="override params.max_steps (stop after this many steps)")
    p.add_argument("--workers", type=int, help="override params.num_workers (data loader processes)")
    p = add("sd", cmd_sd, "run every variant of a sweep (or one variant): submission, scores, leaderboard row each")
    p.add_argument("--sweep", help="sweep YAML: a base config and named variants (configs/sd-prompts.yaml)")
    p.add_argument("--variant", help="one variant instead of a sweep: configs/<name>.yaml or a YAML path")
    p.add_argument("--only", help="comma-separated variant names of the sweep to run (default: all)")
    p.add_argument("--param", action="append", help="override a method parameter of every variant: key=value")
    p = add("blend", cmd_blend, "fit non-negative weights summing to one on the variants' validation box pixels, "
            "report them cross-fitted, and submit the blend as a variant")
    p.add_argument("--variants", required=True, help="comma-separated variant names, each submitted on this data")
    p.add_argument("--name", help="the blend's variant name (default: blend-<a>_<b>_...)")
    p.add_argument("--per-channel", action="store_true", help="one weight per part and colour channel")
    p = add("compare", cmd_compare, "write the comparison report (HTML + PNG) from the leaderboard")
    p.add_argument("--variants", help="comma-separated variant names (default: every variant on the leaderboard)")
    p.add_argument("--images", type=int, default=6, help="gallery rows (validation images)")
    p.add_argument("--out", default="submissions/report.html", help="HTML path; the PNG goes beside it")
    p = add("serve", cmd_serve, "a local web app: upload or pick an image, brush a mask, inpaint with any variant")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-pixels", type=int, default=4096 * 4096, help="largest photo accepted, in pixels")
    p = add("duplicates", cmd_duplicates, "find the training photos that test and validation images are copies of")
    p.add_argument("--max-rmse", type=float, default=None, help="known-pixel RMSE (0..1) at or under which a match "
                   "is a copy (default: configs/nearest.yaml's max_known_rmse)")
    p.add_argument("--rows", type=int, default=30, help="table rows in the terminal (closest first)")
    p.add_argument("--pairs", type=int, default=40, help="pairs on the HTML page (closest first)")
    p.add_argument("--out", default="submissions/duplicates.html", help="the HTML page")
    p.add_argument("--again", action="store_true", help="search again even if the saved matches are current")
    return parser


def _close_progress_bars() -> None:
    """Close the bars an error left open (a training loop, say), so that its message starts on a
    line of its own instead of being glued to a bar."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    render_with(render_step)  # every next step a message names reads as this process was started
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PipelineError as exc:  # errors a person acts on carry their own message
        _close_progress_bars()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        _close_progress_bars()
        # a write that does not name its file itself: say what we know
        print(f"error: the disk is full ({exc.strerror}){f' writing {exc.filename}' if exc.filename else ''}; "
              "free some space and run again", file=sys.stderr)
        return 2
    return 0

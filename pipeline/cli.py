"""`python -m pipeline <command>`: one command per step of the flow; the Make targets call these.

    sample        build the offline sample competition (data/sample, data/sample-truth)
    data          download a Kaggle competition into data/raw/<slug> and validate it
    predict       run a variant on the validation split and the test set
    submit        predict, write + validate submissions/<variant>.csv, score, record it
    validate      check any submission CSV before upload
    score         score a variant on the validation split, or a CSV against test truth
    leaderboard   print the leaderboard
    kaggle-submit upload a variant's validated CSV to Kaggle and confirm it arrived
    kaggle-scores pull Kaggle public scores into the leaderboard
    compare       write submissions/report.html (+ .png): table, RMSE chart, per class, gallery
    sd            run a sweep of variants (e.g. SD prompts): one submission + leaderboard row each
    train         train a trainable variant (pix2pix, pconv, glcic): checkpoints/<variant>/, runs/<variant>/
    serve         a local web app (and HTTP route) to inpaint a photo with any variant
    duplicates    find the training photos that test and validation images are copies of
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from pipeline.config import ConfigError, DataConfig, PipelineError, VariantConfig, data_config, load_variant
from pipeline.data.competition import load_competition
from pipeline.leaderboard import Leaderboard


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
    from pipeline.data.sample import build_sample

    cfg = DataConfig()
    from pipeline.data.competition import find_dataset

    old_layout = Path(cfg.root).is_dir() and find_dataset(Path(cfg.root)) is None
    if old_layout:
        print(f"note: {cfg.root} holds a sample in an older layout; rebuilding it", file=sys.stderr)
    build_sample(cfg, seed=args.seed, force=args.force or old_layout)
    _describe(load_competition(cfg))
    print(f"truth of the test images in {cfg.truth}")


def _describe(competition) -> None:
    from pipeline.submission import submission_spec

    spec = submission_spec(competition)
    print(f"{competition.root}: {competition.layout} layout, {len(competition.train)} train, "
          f"{len(competition.val)} validation, {len(competition.test)} test images; classes "
          f"{', '.join(competition.classes)}; boxes from {competition.bbox_csv}")
    print(f"submission format {spec.fmt.describe()}"
          + (f"; ids and order from {spec.sample}" if spec.sample else ""))


def cmd_data(args) -> None:
    from pipeline.data.download import download_competition

    dest = Path("data/raw") / args.competition
    download_competition(args.competition, dest, force=args.force)
    _describe(load_competition(data_config({"root": dest, "truth": None})))
    print(f"next: make submit VARIANT=telea DATA={dest}")


def cmd_predict(args) -> None:
    from pipeline.inpainters.base import preflight
    from pipeline.predict import variant_lock
    from pipeline.submit import predict_splits

    variant = _variant(args)
    preflight(variant)
    competition = load_competition(variant.data)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    for split in [s for s in splits if s in ("val", "test") and not competition.split(s)]:
        print(f"note: the {split} split is empty (data.val_count = 0?); skipped", file=sys.stderr)
    splits = [s for s in splits if s not in ("val", "test") or competition.split(s)]
    with variant_lock(variant.name, competition):
        runs = predict_splits(variant, competition, splits)
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
    from pipeline.submit import submit_variant

    variant = _variant(args)
    preflight(variant)
    competition = load_competition(variant.data)
    run_dir = Path("runs") / variant.name  # a trained variant's TensorBoard folder
    entry = submit_variant(variant, competition, Leaderboard(), run_dir=str(run_dir) if run_dir.is_dir() else None)
    if entry:
        _print_entry(variant, entry)


def cmd_train(args) -> None:
    from pipeline.config import CONFIG_DIR
    from pipeline.train import train

    variant = _variant(args)
    result = train(variant, resume=args.resume, restart=args.restart, epochs=args.epochs,
                   max_steps=args.max_steps, num_workers=args.workers)
    if not result.is_main_process:  # under accelerate launch, one report is enough
        return
    best = f"{result.best_val_rmse:.4f}" if result.best_val_rmse is not None else "n/a"
    print(f"{variant.name}: {result.steps} steps, {result.epochs_done} epochs in {result.seconds:.0f} s; "
          f"best validation RMSE {best} -> {result.best}; run state {result.last}; TensorBoard {result.run_dir}")
    # VARIANT=<name> finds configs/<name>.yaml only; a YAML elsewhere is named by its path
    shipped = variant.source is not None and variant.source.resolve() == (CONFIG_DIR / f"{variant.name}.yaml").resolve()
    print(f"next: make submit VARIANT={variant.name if shipped else args.variant}"
          + (f" DATA={args.data}" if args.data else ""))


def cmd_sd(args) -> None:
    """Every variant of a sweep (or one variant): checks first, then one submission each."""
    from pipeline.config import load_sweep
    from pipeline.inpainters.base import preflight
    from pipeline.predict import process_state
    from pipeline.submit import submit_variant

    if bool(args.sweep) == bool(args.variant):
        raise ConfigError("sd needs --sweep FILE (a list of variants) or --variant NAME (one)")
    variants = load_sweep(args.sweep, data_root=args.data) if args.sweep else [
        load_variant(args.variant, data_root=args.data)]
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(wanted) - {v.name for v in variants})
        if unknown:
            raise ConfigError(f"--only: no variant(s) {', '.join(unknown)} in {args.sweep or args.variant}; "
                              f"available: {', '.join(v.name for v in variants)}")
        variants = [v for v in variants if v.name in wanted]
    for variant in variants:
        _apply_params(variant, args.param)
        _with_channels(variant.data, args)
    for variant in variants:  # before any other work: every config valid, every model's weights here
        preflight(variant)
    main = process_state().is_main_process
    leaderboard, competitions = Leaderboard(), {}
    for variant in variants:
        key = json.dumps(variant.to_dict()["data"], sort_keys=True)
        if key not in competitions:
            competitions[key] = load_competition(variant.data)
        entry = submit_variant(variant, competitions[key], leaderboard)
        if main:
            _print_entry(variant, entry)
    if main:
        print(leaderboard.format(variants=[v.name for v in variants]))


def cmd_validate(args) -> None:
    from pipeline.submission import validate_submission

    competition = load_competition(_data_config(args), check_images=False)
    result = validate_submission(Path(args.csv), competition)
    print(f"{result.path}: OK, {result.rows} values, sha256 {result.sha256}")


def cmd_score(args) -> None:
    from pipeline.predict import prediction_dir, score_split, truth_boxes
    from pipeline.score import score_boxes
    from pipeline.submission import read_submission, submission_spec, validate_submission

    if args.csv:
        competition = load_competition(_data_config(args), check_images=False)
        spec = submission_spec(competition)
        validate_submission(Path(args.csv), competition, spec=spec)
        scores = score_boxes(read_submission(Path(args.csv), competition, spec),
                             truth_boxes(competition, competition.test),
                             [r.label for r in competition.test])
        where = f"{args.csv} against {competition.config.truth}"
    elif args.variant:
        variant = _variant(args)
        competition = load_competition(variant.data)
        if not competition.val:
            raise ConfigError(f"{variant.name}: the validation split of {competition.root} is empty (data.val_count "
                              "is 0); score a submission against known test truth with `make score CSV=<file>`")
        folder = prediction_dir(variant.name, "val", competition)
        if not (folder / "run.json").exists():
            raise ConfigError(f"{variant.name} was never predicted on {competition.root}: run "
                              f"`make submit VARIANT={variant.name}" + (f" DATA={args.data}`" if args.data else "`"))
        scores = score_split(competition, "val", folder, variant.name)
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
        from pipeline.predict import split_fingerprint

        split = split_fingerprint(load_competition(_data_config(args), check_images=False), "val")
    print(Leaderboard().format(all_rows=args.all, split=split))


def cmd_compare(args) -> None:
    from pipeline.report import build_report

    variants = [v.strip() for v in (args.variants or "").split(",") if v.strip()] or None
    report = build_report(Leaderboard(), Path(args.out), variants, args.images, args.data)
    for name, note in report.notes.items():
        print(f"note: {name}: {note}", file=sys.stderr)
    print(f"{report.html} and {report.png}: {len(report.variants)} variant(s): {', '.join(report.variants)}")


def _latest_row(variant_name: str, data_root: Path):
    """The variant's newest leaderboard row made on `data_root`."""
    table = Leaderboard().read()
    rows = table[table["variant"] == variant_name]
    if rows.empty:
        raise ConfigError(f"variant {variant_name!r} has no submission yet: run `make submit VARIANT={variant_name}`")
    same = rows[rows["data"].map(lambda d: Path(str(d)).resolve() == Path(data_root).resolve())]
    if same.empty:
        folders = ", ".join(sorted({str(d) for d in rows["data"]}))
        raise ConfigError(f"{variant_name} was submitted on {folders}, not on {data_root}: pass DATA=<that folder> "
                          f"(make kaggle-submit VARIANT={variant_name} DATA=...), or run "
                          f"`make submit VARIANT={variant_name} DATA={data_root}` first")
    return same.iloc[-1]


def cmd_kaggle_submit(args) -> None:
    from pipeline import kaggle
    from pipeline.submission import validate_submission
    from pipeline.submit import kaggle_message

    variant = _variant(args)
    competition = load_competition(variant.data, check_images=False)
    row = _latest_row(variant.name, competition.root)
    csv = Path(row["submission"])
    # a bad file never costs one of the day's submissions: the competition's format, scale and ids
    result = validate_submission(csv, competition)
    if result.sha256 != row["sha256"]:
        raise ConfigError(f"{csv} changed since it was recorded; run `make submit VARIANT={variant.name}` again")
    found = kaggle.submit(args.competition, csv, kaggle_message(row))
    Leaderboard().update_kaggle(result.sha256, found.ref, found.status, found.public_score)
    print(f"submitted {csv} to {args.competition} (channels {row['channels']}): ref {found.ref}, status {found.status}"
          + (f", public score {found.public_score}" if found.public_score is not None else ""))


def cmd_kaggle_scores(args) -> None:
    from pipeline import kaggle

    leaderboard = Leaderboard()
    known = set(leaderboard.read()["sha256"].dropna())
    updated = 0
    for submission in reversed(kaggle.list_submissions(args.competition)):  # oldest first: newest wins
        sha = next((s for s in known if f"[sha {s[:12]}]" in (submission.description or "")), None)
        if sha and leaderboard.update_kaggle(sha, submission.ref, submission.status, submission.public_score):
            updated += 1
    print(f"{updated} leaderboard row(s) updated from {args.competition}'s submissions")
    print(leaderboard.format())


def cmd_serve(args) -> None:
    from pipeline.serve import serve

    serve(data_root=args.data, host=args.host, port=args.port, max_pixels=args.max_pixels)


def cmd_duplicates(args) -> None:
    from pipeline.duplicates import duplicates_step

    competition = load_competition(_data_config(args))
    step = duplicates_step(competition, Path(args.out), max_rmse=args.max_rmse, rows=args.rows,
                           pairs=args.pairs, again=args.again)
    print(step.table)
    print(f"{step.file}: the matches ({'searched now' if step.searched else 'current, reused'}); {step.html}: the "
          f"closest pairs side by side")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PipelineError as exc:  # errors a person acts on carry their own message
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0

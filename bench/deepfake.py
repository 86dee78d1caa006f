"""Where does the time per video go? (`./run.sh bench deepfake`)

A Kaggle kernel has a fixed time budget for thousands of test videos (DFDC: 4000 in 9 hours), so
the inference path (`common.video.inference`: sample frames -> detect faces -> classify crops) is timed
step by step, per video, on this machine:

* decode: `read_frames` of the configured number of evenly spaced frames (32 unless `video.frames=`
  says otherwise) and nothing else: the decode-only floor of this run, the least the pipeline
  can pay, measured beside the rest;
* detect: face detection and crops on those frames (`FaceExtractor.faces_in`);
* classify: every fold model on the crops (with flip TTA if configured) and the aggregation;
* total = decode + detect + classify, one video at a time, and its ratio to decode;
* predict: seconds per video of `VideoPredictor.predict` itself over the set (each file of a set of
  fewer than four repeated), one video at a time with read-ahead (`infer.workers=1
  infer.read_ahead=1`): the next video is decoded while this one is detected and classified, so a
  video costs about the larger of the two, and its ratio to decode;
* 2 at a time: the same `predict` with two videos in flight (`infer.workers=2`, the deepfake
  default: two threads, an extractor each): decoding one while detecting the other - what a
  kernel's submission pays per video with the default config;
* full decode: every frame decoded without RGB conversion (`decode_all`), for reference.

Video sets: the demo test videos (generated on first use, like `train`) and each real clip of
`../shared/data` (`dfdc_sample/train_sample_videos/*.mp4`, `video/carphone_pristine.mp4`) when
present, or the files/folders in `videos=`.
With `run.name=NAME` the run's models and settings are timed; otherwise an untrained network of
the deepfake config (the same cost). Writes `outputs/bench/deepfake.md`.

Usage: `./run.sh bench deepfake [videos=PATH,PATH] [limit=N] [threads=N] [out=DIR] [repeat=N]
[run.name=NAME] [any deepfake config key=value ...]`.
"""
from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import pandas as pd

from common.core.config import load_config, split_overrides
from common.core.errors import ConfigError, DataError
from common.core.paths import REPO_ROOT, resolve_data_root, run_dir
from common.video.frames import decode_all

OPTIONS = {"videos": None, "limit": 20, "threads": None, "out": "outputs/bench", "repeat": 1}
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SHARED_VIDEO = SHARED_DATA / "video" / "carphone_pristine.mp4"
BENCH_FRAMES = "video.frames=32"  # the budget: 32 frames per video, as DFDC's winners sampled


def parse_options(argv: list[str]) -> tuple[dict, list[str]]:
    pairs = split_overrides(argv)
    options = {key: pairs.pop(key, default) for key, default in OPTIONS.items()}
    return options, [f"{k}={v}" for k, v in pairs.items()]


def video_sets(options: dict, cfg) -> dict[str, list[Path]]:
    """name -> video files."""
    if options["videos"]:
        sets = {}
        for item in str(options["videos"]).split(","):
            path = Path(item).expanduser()
            files = sorted(path.glob("*.mp4")) if path.is_dir() else [path]
            if not files or not all(f.is_file() for f in files):
                raise DataError(f"videos={item}: no such video file or folder of .mp4 files")
            sets[path.name] = files
        return sets
    from competitions.deepfake import COMPETITION

    root = resolve_data_root(cfg, COMPETITION.name, COMPETITION.slug, COMPETITION.write_demo)
    sets = {f"{root.name} test videos": [Path(p) for p in COMPETITION.read_test(root).path]}
    for clip in [*sorted((SHARED_DATA / "dfdc_sample" / "train_sample_videos").glob("*.mp4")), SHARED_VIDEO]:
        if clip.is_file():
            sets[clip.name] = [clip]
    return sets


def make_predictor(cfg):
    from common.video.inference import VideoPredictor, build_classifier

    if cfg.run.get("name"):
        return VideoPredictor.load(run_dir(cfg, "deepfake", create=False), progress=False, device="cpu")
    return VideoPredictor(cfg, [build_classifier(cfg, pretrained=False)], progress=False, device="cpu")


def time_video(predictor, path: Path) -> dict:
    from common.video.inference import aggregate, frame_probabilities

    extractor = predictor.extractor
    t0 = time.perf_counter()
    frames = extractor.read(path)
    t1 = time.perf_counter()
    faces = extractor.faces_in(frames)
    t2 = time.perf_counter()
    probs = predictor.crop_probabilities(faces.crops)
    aggregate(frame_probabilities(probs, faces.frame_idx), predictor.calibration["aggregation"], **predictor.params)
    t3 = time.perf_counter()
    total_frames = decode_all(path, backend=extractor.backend)
    t4 = time.perf_counter()
    return {"decode": t1 - t0, "detect": t2 - t1, "classify": t3 - t2, "full decode": t4 - t3,
            "frames": len(frames), "total_frames": total_frames, "crops": len(faces),
            "with face": faces.frames_with_face / max(len(frames), 1), "size": f"{frames.shape[2]}x{frames.shape[1]}"}


def through_predict(predictor, files: list[Path], *, workers: int, read_ahead: int, least: int = 4) -> float:
    """Seconds per video of `predictor.predict` over `files` (repeated to at least `least` videos, after
    a warm-up on one) with `infer.workers` and `infer.read_ahead` set as given, then restored."""
    infer = predictor.cfg.infer
    saved = infer.get("workers", 1), infer.get("read_ahead", 0)
    infer["workers"], infer["read_ahead"] = workers, read_ahead
    try:
        jobs = list(files) * max(1, -(-least // max(len(files), 1)))
        predictor.predict(jobs[:1])
        started = time.perf_counter()
        predictor.predict(jobs)
        return (time.perf_counter() - started) / len(jobs)
    finally:
        infer["workers"], infer["read_ahead"] = saved
        predictor.records.clear()


def report(rows: list[dict], cfg, predictor, options: dict, seconds: float) -> str:
    import torch

    lines = [
        "# Deepfake inference: seconds per video on this machine",
        "",
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), CPU; "
        f"backbone {cfg.model.backbone} at {cfg.data.image_size[0]} px, {len(predictor.models)} model(s), "
        f"flip TTA {bool(cfg.infer.tta_flip)}; {cfg.video.frames} frames per video, detector "
        f"{predictor.extractor.detector_name}, faces {cfg.faces.mode}"
        + (f", whole frames every {predictor.extractor.detect_every} ({predictor.extractor.between} between)"
           if predictor.extractor.detect_every > 1 else "") + ". Mean over the videos of each set"
        f"{' (each timing the best of ' + str(options['repeat']) + ' passes)' if int(options['repeat']) > 1 else ''}.",
        "",
        "| videos | n | frame size | frames kept / in file | decode (floor) | detect | classify | total | total / decode "
        "| predict | predict / decode | 2 at a time | 2 at a time / decode | full decode | frames with a face |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['set']} | {row['n']} | {row['size']} | {row['frames']:.0f} / {row['total_frames']:.0f} | "
                     f"{row['decode']:.3f} | {row['detect']:.3f} | {row['classify']:.3f} | {row['total']:.3f} | "
                     f"{row['total'] / row['decode']:.2f} | {row['predict']:.3f} | {row['predict'] / row['decode']:.2f} | "
                     f"{row['pair']:.3f} | {row['pair'] / row['decode']:.2f} | "
                     f"{row['full decode']:.3f} | {row['with face']:.0%} |")
    lines += ["", "Seconds per video. decode + detect + classify = total, what `common.video.inference` spends on one "
              "video at a time; predict: `VideoPredictor.predict` over the set, one video at a time with read-ahead 1 "
              "(decoding the next video meanwhile); decode is `read_frames` alone (the floor: sampled frames only, non-reference frames "
              "skipped where the codec allows); 2 at a time: the same predict with two videos in flight (infer.workers=2, the default); full decode: every "
              "frame decoded, none converted.", f"Bench wall time {seconds:.0f} s."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    started = time.time()
    try:
        options, overrides = parse_options(argv)
        if not any(o.startswith("video.frames=") for o in overrides):
            overrides = [BENCH_FRAMES, *overrides]
        cfg = load_config(REPO_ROOT / "competitions" / "deepfake" / "config.yaml", overrides)
        sets = video_sets(options, cfg)
        predictor = make_predictor(cfg)
        cfg = predictor.cfg
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import torch

    if options["threads"]:
        torch.set_num_threads(int(options["threads"]))
    rows = []
    for name, files in sets.items():
        files = files[: int(options["limit"])] if options["limit"] else files
        time_video(predictor, files[0])  # warm-up: first model call, detector and decoder initialisation
        per_video = []
        for path in files:
            passes = pd.DataFrame([time_video(predictor, path) for _ in range(max(1, int(options["repeat"])))])
            best = passes.iloc[0].to_dict()  # counts and sizes; each timing is its best pass (least disturbed)
            best.update({k: float(passes[k].min()) for k in ("decode", "detect", "classify", "full decode")})
            per_video.append(best)
        table = pd.DataFrame(per_video)
        row = {"set": name, "n": len(files), "size": table["size"].iloc[0],
               **{k: float(table[k].mean()) for k in ("decode", "detect", "classify", "full decode", "frames",
                                                       "total_frames", "with face")}}
        row["total"] = row["decode"] + row["detect"] + row["classify"]
        row["predict"] = through_predict(predictor, files, workers=1, read_ahead=1)
        row["pair"] = through_predict(predictor, files, workers=2, read_ahead=0)
        rows.append(row)
        print(f"{name}: {len(files)} videos, decode {row['decode']:.3f} s, detect {row['detect']:.3f} s, classify "
              f"{row['classify']:.3f} s, total {row['total']:.3f} s ({row['total'] / row['decode']:.2f}x decode), predict "
              f"{row['predict']:.3f} s ({row['predict'] / row['decode']:.2f}x), "
              f"2 at a time {row['pair']:.3f} s per video", flush=True)
    text = report(rows, cfg, predictor, options, time.time() - started)
    out = Path(options["out"])
    out = out if out.is_absolute() else REPO_ROOT / out
    out.mkdir(parents=True, exist_ok=True)
    (out / "deepfake.md").write_text(text + "\n")
    print("\n" + text + f"\n\ntable: {out / 'deepfake.md'}", flush=True)
    return 0

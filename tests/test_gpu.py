"""GPU checks: the toolkit's CUDA paths, which the CPU suite never runs.

How to run (on a machine with an NVIDIA GPU; estimated 3-4 minutes on one H200, not yet measured):

    ./run.sh test -m gpu -s                  # only these tests, with what each one measured
    GPU_REPORT=gpu.md ./run.sh test -m gpu -s   # also append the throughput line (markdown) to gpu.md

Without CUDA (`torch.cuda.is_available()` is False) every test here is skipped, with the reason
shown by `-rs`. Each test prints what it measured (`-s` shows it).

What each test proves:

* `test_amp_fixed_batch_loss_decreases[fp16|bf16]`: `common.engine.trainer.train_fold` on CUDA
  really trains under autocast (the convolutions run in fp16 / bf16, checked with a forward
  hook), fp16 goes through the GradScaler (its state is in `last.pt`), bf16 needs none; 30 steps
  on one fixed batch of the whales network (small CNN, GeM, BatchNorm neck, ArcFace) keep the
  loss finite and bring it down.
* `test_whales_smoke_train_on_cuda`: `python -m competitions.whales train preset=smoke gpus=1`
  finishes on the GPU (GPU memory allocated, checkpoint tensors saved from CUDA) with a finite
  OOF MAP@5 in metrics.json, two log.csv rows and a submission.csv in the sample submission's order; this
  also runs the embedding under autocast and faiss on the GPU (`build_index(use_gpu="auto")`).
* `test_whales_resume_on_cuda`: the same run with fold 0 unfinished continues with
  `resume=true gpus=1`, i.e. `train_fold` reloads `last.pt` (model, optimiser, grad scaler,
  RNG state) onto the GPU.
* `test_ddp_nccl_sync_bn_through_the_launcher`: `gpus=N dist.sync_bn=true dist.backend=nccl`
  through the CLI's torchrun launcher with N = min(GPUs, 2); on a single GPU `gpus=1` never
  launches, so the test runs `torchrun --nproc_per_node=1 -m competitions.whales train ...`
  itself. The run must finish and write the same files as the same run on the CPU (`gpus=0`).
  With one process `distributed.init` joins no process group, so on one GPU this proves the
  torchrun environment path only; the next test covers NCCL, DDP and SyncBatchNorm.
* `test_nccl_ddp_sync_bn_collectives`: under torchrun on a real NCCL process group (N = min(GPUs,
  2) ranks; on one GPU a one-rank group, with the toolkit's world size reported as 2 so that it
  takes its multi-process branches, since NCCL refuses two ranks on one GPU):
  `distributed.wrap_model(sync_bn=True)` gives DistributedDataParallel over SyncBatchNorm with
  the same network function as before (checked on efficientnet_lite0, whose timm BatchNormAct2d
  layers carry the activations), `sum_over_ranks`, `broadcast` (and with 2 GPUs `gather_rows`)
  work on the NCCL backend, and `train_fold` trains the DDP model for 3 epochs with finite
  losses. Every check reports; the test lists all that failed.
* `test_faiss_gpu_exact_matches_cpu`, `test_faiss_gpu_ivf`: `build_index(use_gpu=True)` on 20k x
  128 random unit vectors gives a GPU index whose top-10 neighbours are the CPU exact index's
  (recall@10 >= 0.999): exact, IVF with every list probed (and, at the default nprobe and with
  product quantisation, the same recall as the CPU IVF index within 0.05).
* `test_deepfake_predict_on_cuda_matches_cpu`: `python -m competitions.deepfake train
  preset=smoke gpus=1`, then `predict` (the inference the Kaggle kernel runs: decode, detect,
  classify, aggregate, calibrate) on CUDA and on the CPU (`gpus=0`): the CUDA predict allocated
  GPU memory and the CPU one none (a probe around the command reports it), probabilities are
  finite, in (0, 1), equal within 1e-3 to each other and to the training run's submission.
* `test_training_throughput`: images/s of resnet18 forward + backward + SGD step at 224 px,
  batch 64, under the trainer's autocast rule (bf16 if supported, else fp16 + GradScaler), 20
  timed steps after 5 warm-up; printed (and appended to $GPU_REPORT); only asserted > 0.

The toolkit's internals are imported inside the tests (the command line is used wherever it
covers the path), so a moved function fails one test, not the collection of this file.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs CUDA (torch.cuda.is_available() is False); on a GPU machine: ./run.sh test -m gpu -s"),
]

# Launcher variables a parent torchrun (or a shell) may have set: a child run must not inherit them.
LAUNCH_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
               "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


def _n_ranks() -> int:
    """Processes for the DDP checks: two when there are two GPUs, else one."""
    return min(torch.cuda.device_count(), 2)


def _torchrun(nproc: int) -> list[str]:
    return ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "4"))
    return env


def _run(args: list[str], timeout: int = 300) -> tuple[str, float]:
    """`python ARGS` from the repository root; its output and seconds, or a failure showing its output.

    It runs in a session of its own, so that a hung run (a collective waiting forever) is killed
    with every process it started (torchrun's workers) when the timeout strikes.
    """
    command = [sys.executable, *args]
    started = time.time()
    proc = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        what = f"exited {proc.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        what = f"timed out after {timeout} s (killed)"
    seconds = time.time() - started
    assert proc.returncode == 0, (f"{' '.join(command)}\n{what} after {seconds:.0f} s\n"
                                  f"--- stdout (tail)\n{stdout[-4000:]}\n--- stderr (tail)\n{stderr[-6000:]}")
    return stdout + stderr, seconds


# `python -c CUDA_PROBE MODULE ARGS...` runs `python -m MODULE ARGS...` and, at exit, reports how much
# GPU memory the command allocated: proof from outside of where a command really ran.
CUDA_PROBE = (
    "import atexit, runpy, sys, torch\n"
    "atexit.register(lambda: print('[cuda-probe] max_memory_allocated=%d' % (torch.cuda.max_memory_allocated() "
    "if torch.cuda.is_initialized() else 0), file=sys.stderr, flush=True))\n"
    "module = sys.argv.pop(1)\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)


def _cli(competition: str, *args: str, launcher: list[str] | None = None, timeout: int = 300) -> tuple[str, float]:
    """`python -m competitions.COMPETITION ARGS` (under `launcher`, e.g. torchrun, when given)."""
    if launcher:
        return _run([*launcher, "-m", f"competitions.{competition}", *args], timeout=timeout)
    return _run(["-c", CUDA_PROBE, f"competitions.{competition}", *args], timeout=timeout)


def _cuda_bytes(output: str) -> int:
    """GPU memory the command allocated at its peak (from CUDA_PROBE's line)."""
    lines = [line for line in output.splitlines() if line.startswith("[cuda-probe] max_memory_allocated=")]
    assert lines, "the command's output has no [cuda-probe] line"
    return int(lines[-1].split("=", 1)[1])


def _whales_train(data: Path, runs: Path, name: str, *extra: str) -> list[str]:
    return ["train", "preset=smoke", f"data.root={data}", f"run.root={runs}", f"run.name={name}", "progress=false",
            "data.num_workers=0", f"data.cache_dir={runs / 'cache'}", *extra]


def _run_files(run: Path) -> list[str]:
    """Every file a run wrote, relative to its folder (TensorBoard event names hold host and time)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts)


def _saved_on_cuda(checkpoint: Path) -> bool:
    """True when the checkpoint's tensors were saved from the GPU (they load back onto it)."""
    state = torch.load(checkpoint, weights_only=True)  # no map_location: tensors return to where they were saved
    tensors = [v for v in state["model"].values() if torch.is_tensor(v)]
    return bool(tensors) and all(t.is_cuda for t in tensors)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _first_import(*specs: str):
    """The first "module:name" of specs that imports (the shared core is being reorganised)."""
    import importlib

    errors = []
    for spec in specs:
        module, name = spec.split(":")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{spec}: {exc}")
    raise ImportError("none of these import: " + "; ".join(errors))


WHALES_CONFIG = REPO / "competitions" / "whales" / "config.yaml"


# --- shared data: one small demo dataset per competition for the whole module ---------------


@pytest.fixture(scope="module")
def whales_data(tmp_path_factory) -> Path:
    from competitions.whales.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("whales_demo"), n_identities=24, n_train=120, n_test=40, progress=False)


@pytest.fixture(scope="module")
def deepfake_data(tmp_path_factory) -> Path:
    from competitions.deepfake.demo import write_demo

    return write_demo(tmp_path_factory.mktemp("deepfake_demo"), n_real=4, fakes_per_real=2, n_test=4, n_frames=8,
                      progress=False)


# --- 1. mixed precision -----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_amp_fixed_batch_loss_decreases(precision, tmp_path, monkeypatch):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip(f"{torch.cuda.get_device_name()} has no bf16")
    if precision == "fp16":  # the trainer takes bf16 whenever the GPU has it: hide it to reach fp16 + GradScaler
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    from common.core.config import load_config
    from common.engine.trainer import seed_everything, train_fold

    build_model = _first_import("common.models.factory:build_model", "common.engine.build:build_model")
    build_objective = _first_import("common.losses.objective:build_objective", "common.engine.build:build_objective")
    steps = 30
    cfg = load_config(WHALES_CONFIG, ["preset=smoke", f"train.epochs={steps}", "train.warmup_epochs=0",
                                           "progress=false", "gpus=1"])
    seed_everything(0)
    n_classes, per_class = 8, 4
    model = build_model(cfg, n_classes, class_counts=[per_class] * n_classes)
    height, width = cfg.data.image_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(n_classes * per_class, 3, height, width, generator=generator)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    # one step per epoch, always the same batch
    batch = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=len(labels))

    seen_dtypes = set()
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, out: seen_dtypes.add(out.dtype) if m.training else None)

    started = time.time()
    result = train_fold(cfg, fold=0, model=model, train_loader=batch, loss_fn=build_objective(cfg),
                        evaluate=lambda m: {"score": 0.0}, fold_dir=tmp_path / "fold0", log_path=tmp_path / "log.csv",
                        device=torch.device("cuda", 0), monitor="score")
    seconds = time.time() - started
    losses = [row["train_loss"] for row in result.history]
    scaler = torch.load(tmp_path / "fold0" / "last.pt", map_location="cpu", weights_only=True)["scaler"]
    print(f"\n[amp {precision}] {steps} steps in {seconds:.1f} s; conv output dtypes {sorted(map(str, seen_dtypes))}; "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f} (first 5 mean {np.mean(losses[:5]):.3f}, last 5 mean "
          f"{np.mean(losses[-5:]):.3f}); grad scaler state {dict(scaler) or 'none (disabled)'}")
    want = torch.float16 if precision == "fp16" else torch.bfloat16
    assert seen_dtypes == {want}, f"training forward ran in {seen_dtypes}, not under {want} autocast"
    assert len(losses) == steps and all(math.isfinite(v) for v in losses), losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), f"loss did not decrease: {losses}"
    if precision == "fp16":
        assert "scale" in scaler and math.isfinite(float(scaler["scale"])), f"fp16 ran without a grad scaler: {scaler}"
    else:
        assert not scaler, f"bf16 needs no grad scaler, but its state is {scaler}"


# --- 1b. a whales run on the GPU -------------------------------------------------------------


@pytest.fixture(scope="module")
def whales_cuda_run(whales_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("whales_cuda")
    args = _whales_train(whales_data, runs, "cuda", "gpus=1")
    out, seconds = _cli("whales", *args)
    return args, runs / "whales" / "cuda", out, seconds


@pytest.mark.gpu
def test_whales_smoke_train_on_cuda(whales_cuda_run, whales_data):
    _, run, out, seconds = whales_cuda_run
    metrics = json.loads((run / "metrics.json").read_text())
    shown = {k: metrics.get(k) for k in ("oof_map5", "oof_map5_closed", "oof_baseline_map5", "threshold", "test_map5",
                                         "verify_roc_auc", "processes")}
    print(f"\n[whales gpus=1] {seconds:.0f} s, peak GPU memory {_cuda_bytes(out) / 2**20:.0f} MiB; {shown}")
    assert _cuda_bytes(out) > 0, "train gpus=1 allocated no GPU memory"
    assert _finite(metrics["oof_map5"]) and 0.0 <= metrics["oof_map5"] <= 1.0, metrics
    assert _finite(metrics.get("test_map5")), metrics
    assert _saved_on_cuda(run / "fold0" / "best.pt"), "fold0/best.pt was not saved from CUDA tensors: trained on the CPU?"
    log = pd.read_csv(run / "log.csv")
    assert len(log) == 2 and np.isfinite(log.train_loss).all(), log
    sub, sample = pd.read_csv(run / "submission.csv"), pd.read_csv(whales_data / "sample_submission.csv")
    assert list(sub.columns) == ["Image", "Id"] and sub.Image.tolist() == sample.Image.tolist()
    assert sub.Id.map(lambda s: 1 <= len(str(s).split()) <= 5).all()


@pytest.mark.gpu
def test_whales_resume_on_cuda(whales_cuda_run):
    """Runs after test_whales_smoke_train_on_cuda: it reopens fold 0 of that run."""
    args, run, _, _ = whales_cuda_run
    for name in ("oof.csv", "done.json"):  # as if the run had stopped after fold 0's last epoch
        (run / "fold0" / name).unlink(missing_ok=True)
    out, seconds = _cli("whales", *args, "resume=true")
    print(f"\n[whales resume gpus=1] {seconds:.0f} s; " + next((l for l in out.splitlines() if "resum" in l), "(no resume line)"))
    assert "resuming after epoch" in out, out[-3000:]
    assert (run / "fold0" / "oof.csv").is_file() and _finite(json.loads((run / "metrics.json").read_text())["oof_map5"])


# --- 2. DDP over NCCL with SyncBatchNorm -----------------------------------------------------


@pytest.mark.gpu
def test_ddp_nccl_sync_bn_through_the_launcher(whales_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("whales_ddp")
    n = _n_ranks()
    _, cpu_seconds = _cli("whales", *_whales_train(whales_data, runs, "cpu", "gpus=0"))
    nccl = ["dist.sync_bn=true", "dist.backend=nccl"]
    if n >= 2:
        out, seconds = _cli("whales", *_whales_train(whales_data, runs, "nccl", f"gpus={n}", *nccl))
        how = f"gpus={n} (the CLI's torchrun launcher)"
    else:
        out, seconds = _cli("whales", *_whales_train(whales_data, runs, "nccl", "gpus=1", *nccl), launcher=_torchrun(1))
        how = ("torchrun --nproc_per_node=1 (gpus=1 does not launch; with WORLD_SIZE=1 distributed.init joins no "
               "process group, so no NCCL, DDP or SyncBatchNorm here: test_nccl_ddp_sync_bn_collectives covers them)")
    cpu_run, nccl_run = runs / "whales" / "cpu", runs / "whales" / "nccl"
    cpu_m, nccl_m = (json.loads((r / "metrics.json").read_text()) for r in (cpu_run, nccl_run))
    print(f"\n[whales ddp] {how}: {seconds:.0f} s (CPU run {cpu_seconds:.0f} s); processes {nccl_m.get('processes')}; "
          + ", ".join(f"{k} cpu {cpu_m.get(k)} / cuda {nccl_m.get(k)}" for k in ("oof_map5", "test_map5")))
    assert nccl_m["processes"] == n, nccl_m
    assert _finite(nccl_m["oof_map5"]), nccl_m
    assert _saved_on_cuda(nccl_run / "fold0" / "best.pt")
    assert _run_files(nccl_run) == _run_files(cpu_run), (set(_run_files(nccl_run)) ^ set(_run_files(cpu_run)))
    assert sorted(nccl_m) == sorted(cpu_m), set(nccl_m) ^ set(cpu_m)


DDP_SCRIPT = r'''
"""Started by tests/test_gpu.py under torchrun: the toolkit's DDP, SyncBatchNorm and NCCL paths."""
import contextlib, copy, json, os, sys, traceback
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from common.core.config import load_config
from common.engine import distributed
from common.engine.trainer import train_fold
from common.video.inference import build_classifier

world = int(os.environ["WORLD_SIZE"])
out_dir = Path(sys.argv[1])
# efficientnet_lite0 (the README's real-data backbone): BatchNormAct2d layers, and no parameter that
# forward_features leaves unused (lcnet's conv_head would make DDP fail for a reason of its own)
cfg = load_config(Path("competitions/deepfake/config.yaml"),
                  ["preset=smoke", "model.backbone=efficientnet_lite0", "train.epochs=3", "train.warmup_epochs=0",
                   "progress=false", f"gpus={world}", "dist.backend=nccl", "dist.sync_bn=true"])
if world > 1:
    device = distributed.init(cfg)  # the toolkit joins the NCCL group itself
else:
    # distributed.init joins no group at WORLD_SIZE=1, and NCCL refuses two ranks on one GPU: make a
    # real one-rank NCCL group and let the toolkit believe in two processes, so that it takes its
    # multi-process branches (DDP wrap, SyncBatchNorm, all_reduce, broadcast) on it.
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl")
rank = dist.get_rank()


@contextlib.contextmanager
def several_processes():
    if dist.get_world_size() > 1:
        yield
        return
    real = distributed.world_size
    distributed.world_size = lambda: 2
    try:
        yield
    finally:
        distributed.world_size = real


results = {"world_size": dist.get_world_size(), "backend": str(dist.get_backend()), "device": str(device), "checks": {}}


def check(name):
    def run(fn):
        try:
            results["checks"][name] = {"ok": True, "value": fn()}
        except Exception as exc:  # noqa: BLE001 - every check reports, the test lists all failures
            results["checks"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                       "trace": traceback.format_exc()[-2500:]}
        return fn
    return run


@check("wrap_model: DDP over SyncBatchNorm, same network")
def _():
    torch.manual_seed(0)
    model = build_classifier(cfg, pretrained=False).to(device).eval()
    h, w = cfg.data.image_size
    x = torch.randn(8, 3, h, w, device=device)
    with torch.no_grad():
        ref = model(x)["logits"].float()
    before = {type(m).__name__ for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    with several_processes():
        wrapped = distributed.wrap_model(copy.deepcopy(model), device, sync_bn=True)
    inner = distributed.unwrap(wrapped)
    n_sync = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in inner.modules())
    plain = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(m, torch.nn.SyncBatchNorm)
                for m in inner.modules())
    wrapped.eval()
    with torch.no_grad():
        diff = float((wrapped(x)["logits"].float() - ref).abs().max())
    value = {"wrapper": type(wrapped).__name__, "norm_layers_before": sorted(before), "sync_bn_layers": n_sync,
             "plain_bn_left": plain, "max_abs_logit_change_eval": diff}
    assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel), value
    assert n_sync > 0 and plain == 0, value
    assert diff < 1e-3, (f"SyncBatchNorm conversion changed the network ({value}); torch's convert_sync_batchnorm "
                         "turns timm's BatchNormAct2d into a plain SyncBatchNorm and drops its activation "
                         "(timm.layers.convert_sync_batchnorm keeps it)")
    return value


@check("sum_over_ranks on NCCL")
def _():
    with several_processes():
        sums, count = distributed.sum_over_ranks({"loss": 1.5}, 3)
    n = dist.get_world_size()
    assert abs(sums["loss"] - 1.5 * n) < 1e-9 and count == 3 * n, (sums, count)
    return {"sums": sums, "count": count}


@check("broadcast on NCCL")
def _():
    with several_processes():
        value = distributed.broadcast({"from": rank, "array": np.arange(3) * (rank + 1)})
    assert value["from"] == 0 and value["array"].tolist() == [0, 1, 2], value
    return {"from": value["from"]}


if dist.get_world_size() > 1:
    @check("gather_rows(shard) on NCCL")
    def _():
        n = 11
        full = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
        back = distributed.gather_rows(full[distributed.shard(n)], n)
        assert np.array_equal(back, full), back
        return {"rows": n}


@check("train_fold: DDP + SyncBatchNorm + autocast, 3 epochs")
def _():
    torch.manual_seed(0)
    model = build_classifier(cfg, pretrained=False)
    h, w = cfg.data.image_size
    g = torch.Generator().manual_seed(rank)
    data = torch.utils.data.TensorDataset(torch.randn(32, 3, h, w, generator=g), torch.tensor([0.0, 1.0] * 16))
    loader = torch.utils.data.DataLoader(data, batch_size=8)  # 4 steps per epoch, this rank's own images
    x_val, y_val = torch.randn(8, 3, h, w, generator=g).to(device), torch.tensor([0.0, 1.0] * 4, device=device)
    dtypes = set()
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: dtypes.add(str(o.dtype)) if m.training else None)

    def loss_fn(output, labels):
        return F.binary_cross_entropy_with_logits(output["logits"].float(), labels.float()), {}

    def evaluate(m):
        with torch.no_grad():
            return {"logloss": float(F.binary_cross_entropy_with_logits(m.eval()(x_val)["logits"].float(), y_val))}

    with several_processes():
        result = train_fold(cfg, fold=0, model=model, train_loader=loader, loss_fn=loss_fn, evaluate=evaluate,
                            fold_dir=out_dir / "fold0", log_path=out_dir / "log.csv", device=device,
                            monitor="logloss", mode="min")
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 3 and all(np.isfinite(losses)), losses
    return {"train_loss": losses, "autocast_dtypes": sorted(dtypes), "best_epoch": result.best_epoch}


dist.barrier()
if rank == 0:
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
dist.destroy_process_group()
'''


@pytest.mark.gpu
def test_nccl_ddp_sync_bn_collectives(tmp_path):
    n = _n_ranks()
    script = tmp_path / "ddp_check.py"
    script.write_text(DDP_SCRIPT)
    out, seconds = _run([*_torchrun(n), str(script), str(tmp_path)], timeout=240)
    results = json.loads((tmp_path / "results.json").read_text())
    print(f"\n[nccl ddp] {n} rank(s) on {results['backend']} ({results['device']}), {seconds:.0f} s")
    for name, check in results["checks"].items():
        print(f"  {'ok  ' if check['ok'] else 'FAIL'} {name}: {check.get('value', check.get('error'))}")
    assert results["backend"] == "nccl" and results["world_size"] == n, results
    failed = {name: check for name, check in results["checks"].items() if not check["ok"]}
    assert not failed, "\n\n".join(f"{name}: {c['error']}\n{c['trace']}" for name, c in failed.items())


# --- 3. faiss on the GPU ---------------------------------------------------------------------


def _vectors(n: int, d: int = 128, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _recall(ids: np.ndarray, reference: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids.tolist(), reference.tolist())]))


def _assert_gpu_index(index) -> str:
    import faiss

    name = type(index).__name__
    assert faiss.get_num_gpus() > 0, (f"faiss sees no GPU (faiss.get_num_gpus() == 0) although torch sees "
                                      f"{torch.cuda.device_count()}: is the installed faiss a CPU-only build?")
    assert "Gpu" in name or name in ("IndexShards", "IndexReplicas"), f"build_index(use_gpu=True) gave a CPU {name}"
    return name


@pytest.fixture(scope="module")
def faiss_data():
    from common.retrieval.index import build_index, search

    gallery, queries = _vectors(20_000, seed=0), _vectors(2_000, seed=1)
    exact_sims, exact_ids = search(build_index(gallery, use_gpu=False), queries, 10)
    return gallery, queries, exact_sims, exact_ids


@pytest.mark.gpu
def test_faiss_gpu_exact_matches_cpu(faiss_data):
    from common.retrieval.index import build_index, search

    gallery, queries, exact_sims, exact_ids = faiss_data
    started = time.time()
    index = build_index(gallery, use_gpu=True)
    sims, ids = search(index, queries, 10)
    seconds = time.time() - started
    name = _assert_gpu_index(index)
    recall = _recall(ids, exact_ids)
    gap = float(np.abs(sims - exact_sims).max())
    print(f"\n[faiss exact] {name}: recall@10 vs CPU exact {recall:.4f}, max |sim diff| {gap:.2e}, "
          f"build+search {seconds:.2f} s")
    assert recall >= 0.999
    assert gap < 1e-4


@pytest.mark.gpu
def test_faiss_gpu_ivf(faiss_data):
    from common.retrieval.index import build_index, search

    gallery, queries, _, exact_ids = faiss_data
    ivf = dict(exact_max=10_000)  # 20k vectors > exact_max: the IVF path
    full = build_index(gallery, use_gpu=True, nprobe=4096, **ivf)  # nprobe is capped at nlist: every list
    name = _assert_gpu_index(full)
    recall_full = _recall(search(full, queries, 10)[1], exact_ids)
    print(f"\n[faiss ivf] {name}, every list probed: recall@10 vs CPU exact {recall_full:.4f}")
    assert recall_full >= 0.999
    for label, extra in (("IVFFlat, default nprobe", {}), ("IVFPQ m=16, default nprobe", {"pq_m": 16})):
        started = time.time()
        gpu = build_index(gallery, use_gpu=True, **ivf, **extra)
        gpu_recall = _recall(search(gpu, queries, 10)[1], exact_ids)
        gpu_seconds = time.time() - started
        _assert_gpu_index(gpu)
        cpu_recall = _recall(search(build_index(gallery, use_gpu=False, **ivf, **extra), queries, 10)[1], exact_ids)
        print(f"[faiss ivf] {label}: recall@10 GPU {gpu_recall:.4f} ({gpu_seconds:.2f} s), CPU {cpu_recall:.4f}")
        assert abs(gpu_recall - cpu_recall) <= 0.05, (label, gpu_recall, cpu_recall)


# --- 4. the Kaggle kernel's inference on CUDA -----------------------------------------------


@pytest.mark.gpu
def test_deepfake_predict_on_cuda_matches_cpu(deepfake_data, tmp_path):
    runs = tmp_path / "runs"
    common = [f"run.root={runs}", "run.name=cuda", f"data.root={deepfake_data}", "progress=false",
              f"data.cache_dir={runs / 'cache'}"]
    _, train_seconds = _cli("deepfake", "train", "preset=smoke", "data.num_workers=0", "gpus=1", *common)
    run = runs / "deepfake" / "cuda"
    assert _saved_on_cuda(run / "fold0" / "best.pt"), "fold0/best.pt was not saved from CUDA tensors"
    predictions, logs = {}, {}
    for device, gpus in (("cuda", "1"), ("cpu", "0")):
        out = tmp_path / f"predict_{device}.csv"
        logs[device], seconds = _cli("deepfake", "predict", f"out={out}", f"gpus={gpus}", *common)
        predictions[device] = pd.read_csv(out)
        print(f"\n[deepfake predict gpus={gpus}] {seconds:.0f} s, peak GPU memory "
              f"{_cuda_bytes(logs[device]) / 2**20:.1f} MiB")
    assert _cuda_bytes(logs["cuda"]) > 0, "predict gpus=1 allocated no GPU memory: it did not run on CUDA"
    assert _cuda_bytes(logs["cpu"]) == 0, "predict gpus=0 allocated GPU memory: it did not stay on the CPU"
    cuda, cpu = predictions["cuda"], predictions["cpu"]
    trained = pd.read_csv(run / "submission.csv")
    assert cuda.filename.tolist() == cpu.filename.tolist() == trained.filename.tolist()
    p = cuda.label.to_numpy(np.float64)
    gap_cpu = float(np.abs(p - cpu.label.to_numpy(np.float64)).max())
    gap_train = float(np.abs(p - trained.label.to_numpy(np.float64)).max())
    print(f"[deepfake] train gpus=1 {train_seconds:.0f} s; CUDA probabilities {np.round(p, 4).tolist()}; "
          f"max |CUDA - CPU| {gap_cpu:.2e}; max |predict - training's submission| {gap_train:.2e}")
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all(), p
    assert gap_cpu <= 1e-3
    assert gap_train <= 1e-3


# --- 5. throughput ---------------------------------------------------------------------------


@pytest.mark.gpu
def test_training_throughput():
    import timm

    device = torch.device("cuda", 0)
    batch, size, warmup, timed = 64, 224, 5, 20
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16  # the trainer's rule
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=1000).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast("cuda", dtype=dtype):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(timed):
        loss = step()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    rate = timed * batch / seconds
    name = torch.cuda.get_device_name(device)
    line = (f"- {name}: resnet18 (timm) forward + backward + SGD step, {size} px, batch {batch}, "
            f"{str(dtype).replace('torch.', '')} autocast: **{rate:,.0f} images/s** ({timed} timed steps after "
            f"{warmup} warm-up, {seconds / timed * 1000:.1f} ms/step, peak memory "
            f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB, torch {torch.__version__})")
    print("\n[throughput] " + line)
    if os.environ.get("GPU_REPORT"):
        with open(os.environ["GPU_REPORT"], "a") as f:
            f.write(line + "\n")
    assert math.isfinite(float(loss)) and rate > 0

"""The training engine under both scripts (train.py: MELP pretraining; text_pretrain.py: stage one, masked LM).

The pieces, each written once:
- ``init_distributed``: torch.distributed through DeepSpeed (gloo on CPU, nccl on CUDA); plain ``python`` is a
  world of one; under ``deepspeed`` or ``torchrun`` (one node or many) the launcher's RANK / WORLD_SIZE /
  MASTER_ADDR / MASTER_PORT are used as they are; the scripts call ``shutdown_distributed`` on the way out;
- ``load_ds_config``: the DeepSpeed JSON holds what it decides (precision, ZeRO stage, clipping, accumulation); the
  batch sizes and the accumulation (train.accum_steps) come from the run's configuration, and a JSON value that
  says otherwise is a ``UserError``;
- ``param_groups`` (no weight decay on biases, norms, the logit scale, learned queries) and ``warmup_cosine``;
- ``ResumableSampler``: how the data is split across ranks (every epoch a permutation seeded by (seed, epoch);
  rank r takes every world-th record of it; the tail that does not fill all ranks is dropped), able to start an
  epoch part-way, after any number of records (a run resumed on another world size);
- ``Trainer``: the DeepSpeed engine of one run and its position; ``train_step`` with THE non-finite rule,
  ``accum_step`` (train.accum_steps micro-batches per optimiser step: DeepSpeed's accumulation, or the embedding
  cache of accum.py),
  ``fit`` (the loop, with the one place a stop request is checked), ``save`` / ``load`` (the only two functions
  that write and read checkpoints, with one atomic pointer), history logging (history.jsonl, TensorBoard, bar).

Checkpoints: out_dir/checkpoints/step<N>/ holds DeepSpeed's files (model, optimiser, schedule) and one
train_state_rank<r>.safetensors per rank (data position, also in records of the epoch; RNG states; parameter
shapes; no pickle); one written by another number of processes is loaded through resharding.py. The pointer out_dir/checkpoints/
complete names the last checkpoint whose every file is written; it is replaced atomically (os.replace), so a kill
at any moment leaves it naming a loadable checkpoint. DeepSpeed's own `latest` is not written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from ..checks import checkpoint_folder, expected_tensors, read_ds_json
from ..errors import UserError
from ..inference.export import full_state_dict
from .preemption import StopGuard
from .run_dir import POINTER, RUN_FORMAT, check_owner, check_resume, check_run_format, run_id
from .safe_load import deepspeed_weights_only, read_train_state, restore_rng, save_train_state

# What the engine decides when the JSON does not; the batch sizes always come from the run's configuration.
DEFAULT_DS_CONFIG = {
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
    "zero_optimization": {"stage": 0},
    "zero_force_ds_cpu_optimizer": False,
    "steps_per_print": 1_000_000,
}


class NonFiniteLoss(RuntimeError):
    """max_nonfinite non-finite losses in a row: the run saved a checkpoint and stopped."""


# ------------------------------------------------------------------------------------------------ setup
def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed through DeepSpeed (gloo on CPU, nccl on CUDA); one process works too."""
    import deepspeed

    if "WORLD_SIZE" not in os.environ:  # plain `python`: a world of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not dist.is_initialized():
        if not torch.cuda.is_available():
            skip_deepspeed_shm_op()
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def skip_deepspeed_shm_op() -> None:
    """Keep DeepSpeed from JIT-building and loading its CPU shared-memory all-reduce op (deepspeed_shm_comm).

    The engine's collectives are torch.distributed's (gloo on CPU); the op only serves DeepSpeed's inference
    all-reduce. Building it costs a C++ compile on the first run in every new environment, and a run stopped during
    that compile (Ctrl-C on a first `melp-fast demo`) leaves torch's extension lock behind, on which every later run
    waits forever without a word; loaded, it maps a 64 MiB /dev/shm segment per rank that nothing ever unlinks (12 GB
    of RAM on a machine that had run the suite a few dozen times). Marked incompatible, DeepSpeed skips it and uses
    torch.distributed for everything."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def shutdown_distributed() -> None:
    """Destroy the process group before the interpreter exits. Left to interpreter teardown, a rank that finishes
    first can abort in gloo's destructor ("terminate called without an active exception", exit -6) while its peer is
    still connected; seen once in CI on a 2-rank ZeRO-3 run."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def load_ds_config(path, batch_size: int, world: int, accum: int | None = None) -> dict:
    """DEFAULT_DS_CONFIG, then the JSON file (if any), then the batch sizes of the run. A batch size in the file
    that differs from the run's is refused (UserError) rather than overwritten. ``accum``: the run's
    train.accum_steps (a JSON gradient_accumulation_steps that disagrees is a UserError); None takes the JSON's."""
    given = read_ds_json(path) if path else {}
    ds = {**DEFAULT_DS_CONFIG, **given}
    if accum is not None:
        if given.get("gradient_accumulation_steps", accum) != accum:
            raise UserError(f"--ds_config {path}: gradient_accumulation_steps is {ds['gradient_accumulation_steps']}, "
                            f"but train.accum_steps is {accum}; set the accumulation with --set train.accum_steps=N "
                            f"and remove gradient_accumulation_steps from the file")
        ds["gradient_accumulation_steps"] = accum
    accum = ds["gradient_accumulation_steps"]
    decided = {"train_micro_batch_size_per_gpu": batch_size, "train_batch_size": batch_size * accum * world}
    for key, value in decided.items():
        if key in ds and ds[key] != value:
            raise UserError(f"--ds_config {path}: {key} is {ds[key]}, but this run has {value} (batch size "
                            f"{batch_size} per process x {accum} accumulation steps x {world} processes); remove "
                            f"{key} from the file and set the batch size with --batch-size")
    return {**ds, **decided}


def param_groups(model: torch.nn.Module, weight_decay: float):
    """No weight decay on biases, norms, the logit scale and learned queries."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name or "queries" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        t = min(1.0, (step - warmup) / max(total - warmup, 1))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def check_batches(n_batches: int, n_records: int, batch_size: int, world: int, what: str = "records") -> None:
    """A UserError when the data cannot fill one batch per process."""
    if n_batches < 1:
        raise UserError(f"{n_records} {what} cannot fill one batch of {batch_size} on each of {world} process(es); "
                        f"lower the batch size (--batch-size) or give more data")


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way (the data position of a resumed run).

    Every epoch is a permutation of the records seeded by (seed, epoch), whatever the world size. ``consumed``
    records of it (all ranks together: the first ``consumed`` of the permutation) are left out; rank r of W takes
    records r, r + W, ... of the rest, and the tail of fewer than W records is dropped. With consumed = 0 this is
    DistributedSampler(drop_last=True); ``start`` (records per rank) is consumed = start x W. A run resumed on
    another world size passes the records its predecessor consumed: none is seen twice, none skipped but the tail."""

    consumed = 0

    def set_epoch(self, epoch: int, start: int = 0, consumed: int | None = None):
        super().set_epoch(epoch)
        self.consumed = start * self.num_replicas if consumed is None else consumed

    def _order(self) -> list[int]:
        if not self.shuffle:
            return list(range(len(self.dataset)))
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)  # DistributedSampler's own seeding: the same permutation
        return torch.randperm(len(self.dataset), generator=g).tolist()

    def __iter__(self):
        rest = self._order()[self.consumed:]
        n = len(rest) // self.num_replicas
        return iter(rest[self.rank:n * self.num_replicas:self.num_replicas])

    def __len__(self):
        return max(len(self.dataset) - self.consumed, 0) // self.num_replicas


def check_compile(tcfg) -> str | None:
    """What train.compile / train.cuda_graph ask for ("compile", "cuda_graph" or None); a UserError for
    cuda_graph on a machine without CUDA (checked before anything is built)."""
    if getattr(tcfg, "cuda_graph", False):
        if not torch.cuda.is_available():
            raise UserError("train.cuda_graph needs a CUDA device (CUDA graphs); this machine has none: use "
                            "train.compile=true alone, or leave both off")
        return "cuda_graph"
    return "compile" if getattr(tcfg, "compile", False) else None


def compile_model(model: torch.nn.Module, tcfg) -> str | None:
    """train.compile / train.cuda_graph: compile ``model`` in place (nn.Module.compile: its forward and the backward
    AOT autograd derives from it; parameter names, state dicts and checkpoints unchanged) with
    train.compile_backend; cuda_graph: inductor's "reduce-overhead" mode, CUDA only. Returns what was done, or None
    when neither is set."""
    if check_compile(tcfg) is None:
        return None
    backend = getattr(tcfg, "compile_backend", "inductor")
    if getattr(tcfg, "cuda_graph", False):
        if backend != "inductor":
            raise UserError(f"train.cuda_graph captures inductor's graphs: train.compile_backend must be 'inductor', "
                            f"not {backend!r}")
        model.compile(mode="reduce-overhead")  # CUDA graph trees over the compiled forward and backward
        return "reduce-overhead"
    model.compile(backend=backend)
    return f"backend {backend}"


# ------------------------------------------------------------------------------------------------ history
def read_history(path: Path, upto: int) -> list[dict]:
    """History of a resumed run up to its checkpoint (later lines came from steps that are redone)."""
    if upto == 0 or not path.is_file():
        if path.is_file():
            path.unlink()
        return []
    kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in kept if r["step"] <= upto]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_history(path: Path, rec: dict):
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def tb_writer(out_dir: Path, rank: int):
    if rank != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # pragma: no cover - tensorboard is a dependency, but logging is optional
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


# ------------------------------------------------------------------------------------------------ the run
class Trainer:
    """One run: the model in a DeepSpeed engine with AdamW and warmup + cosine, its position (step, epoch, batch
    of the epoch), checkpoints and history. ``tcfg`` is a config.TrainConfig (or TextTrainConfig)."""

    def __init__(self, model: torch.nn.Module, tcfg, out_dir, ds_config_path, rank: int, world: int,
                 quiet: bool = False, desc: str = "train", show: tuple[str, ...] = ("loss",)):
        import deepspeed

        self.cfg, self.out_dir, self.rank, self.world = tcfg, Path(out_dir), rank, world
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.quiet, self.desc, self.show = quiet, desc, show
        self.shapes = {n: list(p.shape) for n, p in model.named_parameters()}  # before ZeRO-3 partitions them
        optimizer = torch.optim.AdamW(param_groups(model, tcfg.weight_decay), lr=tcfg.lr, betas=tuple(tcfg.betas))
        warmup = tcfg.warmup_steps if tcfg.warmup_steps is not None else max(1, round(0.06 * tcfg.steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, tcfg.steps, tcfg.min_lr_ratio))
        self.accum = int(getattr(tcfg, "accum_steps", 1))  # micro-batches per optimiser step
        self.engine, self.optimizer, _, self.schedule = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=schedule,
            config=load_ds_config(ds_config_path, tcfg.batch_size, world, self.accum))
        self.device = self.engine.device
        self.step = self.epoch = self.position = self.skipped = self.bad_in_row = 0
        # records of the current epoch consumed (all ranks) before ``position`` counts micro-batches: non-zero only
        # in an epoch resumed from a checkpoint of another world size or batch size (see records(), load)
        self.offset = 0
        self.stopped = False  # set when a SIGTERM / SIGINT stopped fit() (see fit)

    # -------------------------------------------------------------------------------------------- checkpoints
    def save(self) -> str:
        """THE checkpoint writer: DeepSpeed's files plus every rank's data position and RNG states, then the
        pointer, replaced atomically once every file is written (collective: every rank calls it)."""
        tag = f"step{self.step}"
        pointer = self.ckpt_dir / POINTER
        if pointer.is_file() and pointer.read_text().strip() == tag:
            return tag  # this very state is saved already (a resumed run that had nothing left to do)
        folder = self.ckpt_dir / tag
        folder.mkdir(parents=True, exist_ok=True)
        # our state as safetensors + JSON: loading a checkpoint never unpickles it (safe_load.py)
        save_train_state(folder, self.rank,
                         {"step": self.step, "epoch": self.epoch, "batch": self.position, "skipped": self.skipped,
                          "offset": self.offset, "records": self.records(), "batch_size": self.cfg.batch_size},
                         {"shapes": self.shapes, "world": self.world, "run_id": run_id(self.out_dir),
                          "format": RUN_FORMAT})
        dist.barrier()
        self.engine.save_checkpoint(str(self.ckpt_dir), tag=tag, save_latest=False)
        dist.barrier()
        if self.rank == 0:
            (self.ckpt_dir / (POINTER + ".tmp")).write_text(tag)
            os.replace(self.ckpt_dir / (POINTER + ".tmp"), pointer)
            self._prune(tag)
        return tag

    def _prune(self, current: str) -> None:
        keep = getattr(self.cfg, "keep_checkpoints", 0)
        if keep <= 0:
            return
        tags = sorted((d for d in self.ckpt_dir.glob("step*") if d.is_dir() and d.name[4:].isdigit()),
                      key=lambda d: int(d.name[4:]))
        for d in tags[:-keep]:
            if d.name != current:
                shutil.rmtree(d, ignore_errors=True)

    def records(self) -> int:
        """Records of the current epoch consumed so far, all ranks together (the data position on any world)."""
        return self.offset + self.position * self.cfg.batch_size * self.world

    def load(self, other_world: bool = False) -> str:
        """THE checkpoint reader: the checkpoint the pointer names (model, optimiser, schedule, data position,
        RNG states). A checkpoint of another model shape is a UserError; one of another world size too, unless
        ``other_world`` (train.py): then DeepSpeed's universal checkpoint path re-partitions the ZeRO states
        (resharding.py) and the data position is carried over in records. Returns its folder."""
        check_resume(self.ckpt_dir, True)
        check_run_format(self.out_dir)
        folder = checkpoint_folder(self.ckpt_dir, POINTER)  # inside this run, regular files only (checks.py)
        tag = folder.name
        if not any(folder.glob("train_state_rank0.*")):
            raise UserError(f"--resume: {folder} has no state for rank 0: an incomplete checkpoint")
        state = read_train_state(folder, 0)  # the data position (every rank's is the same)
        info = state["info"]
        check_owner(self.out_dir, folder, info)  # written by this run (its run id)
        saved_world = int(info.get("world", self.world))
        if saved_world != self.world and not other_world:
            raise UserError(f"--resume: {folder} was written by {saved_world} processes, this run has "
                            f"{self.world}; resume with {saved_world}")
        if saved_world == self.world and not any(folder.glob(f"train_state_rank{self.rank}.*")):
            raise UserError(f"--resume: {folder} has no state for rank {self.rank}; an incomplete checkpoint")
        saved = info.get("shapes")
        if saved is not None and saved != self.shapes:
            diff = [f"{k}: {saved.get(k)} there, {self.shapes.get(k)} here"
                    for k in sorted(set(saved) | set(self.shapes)) if saved.get(k) != self.shapes.get(k)]
            raise UserError(f"--resume: {folder} holds a model of another shape ({len(diff)} parameters differ, e.g. "
                            f"{diff[0]}); resume with the settings that wrote it, or start a new --out")
        # DeepSpeed's torch.load runs weights-only (a crafted pickle is refused); model dtypes / shapes checked
        expect = expected_tensors(self.engine.module, self.shapes)
        if saved_world == self.world:
            with deepspeed_weights_only(expect=expect):
                path, _ = self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag)
        else:
            from .resharding import load_other_world

            path = load_other_world(self.engine, folder, saved_world, self.world, self.rank, expect)
        if path is None:
            raise UserError(f"--resume: checkpoint {folder} could not be loaded")
        pos = state["position"]
        self.step, self.epoch, self.skipped = pos["step"], pos["epoch"], pos.get("skipped", 0)
        saved_batch = pos.get("batch_size", self.cfg.batch_size)
        if saved_world == self.world and saved_batch == self.cfg.batch_size:
            restore_rng(read_train_state(folder, self.rank) if self.rank else state)
            self.position, self.offset = pos["batch"], pos.get("offset", 0)
        else:  # the data position in records of the epoch; this process's RNG streams start afresh
            from .resharding import reseed

            reseed(folder, self.rank, saved_world, self.cfg.seed, self.step, restore_rng)
            self.position, self.offset = 0, pos.get("records", pos["batch"] * saved_batch * saved_world)
        return str(folder)

    # -------------------------------------------------------------------------------------------- one step
    def train_step(self, batch: dict, compute: Callable[[dict], dict]) -> dict | None:
        """Forward (``compute(batch)``: a dict of scalar tensors, "loss" the one minimised), backward, step.

        THE non-finite rule: when the loss is not finite on any rank, every rank skips the batch: its gradients
        are dropped, no optimiser step is taken and the step counter and schedule stay (the batch is consumed and
        counted in ``skipped``). After ``max_nonfinite`` such batches in a row the run saves a checkpoint (the
        model before them) and raises NonFiniteLoss. Returns the losses, or None for a skipped batch."""
        batch = self._to_device(batch)
        if getattr(self.cfg, "cuda_graph", False):  # a new step: the graphs' previous outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        losses = compute(batch)
        if not self._finite(losses["loss"]):
            return self._skip()
        self.bad_in_row = 0
        self.engine.backward(losses["loss"])
        self.engine.step()
        self.step += 1
        return losses

    def _to_device(self, batch: dict) -> dict:
        # non_blocking: from pinned memory (train.py's loader on CUDA) the copy does not wait for the previous step
        return {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def _finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is finite on every rank (collective)."""
        finite = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=self.device)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return finite.item() >= 1

    def _skip(self) -> None:
        """The non-finite rule's skip: gradients dropped, no step; a checkpoint and NonFiniteLoss after
        max_nonfinite in a row."""
        self.skipped, self.bad_in_row = self.skipped + 1, self.bad_in_row + 1
        self.engine.zero_grad()
        if hasattr(self.engine.optimizer, "zero_grad"):  # ZeRO's partitioned accumulation buffers too
            self.engine.optimizer.zero_grad()
        if self.bad_in_row >= self.cfg.max_nonfinite:
            tag = self.save()
            raise NonFiniteLoss(f"{self.bad_in_row} non-finite losses in a row at step {self.step}: stopping. The "
                                f"model before them is saved in {self.ckpt_dir / tag} (resume with --resume).")
        return None

    def accum_step(self, batches: list[dict], compute: Callable[[dict], dict], cache=None) -> dict | None:
        """One optimiser step over train.accum_steps micro-batches. ``cache`` (accum.EmbeddingCache, accum_mode
        "cache"): its first pass gives every loss of the whole batch before any backward, then one backward per
        micro-batch with the cached embeddings' gradients. Without it ("plain"): DeepSpeed's accumulation, each
        micro-batch's loss on its own (its negatives: that micro-batch), the mean of their gradients.

        The non-finite rule holds per optimiser step: a non-finite loss on any rank in any micro-batch skips the
        step (gradients of the micro-batches before it dropped). The boundary is set by hand (DeepSpeed's
        set_gradient_accumulation_boundary) and engine.step() called once, so that a skipped step leaves DeepSpeed
        no half-counted accumulation. Returns the step's losses (the whole batch's; "plain": the mean of the
        micro-batches') or None for a skipped step."""
        batches = [self._to_device(b) for b in batches]
        eng, n = self.engine, len(batches)
        if getattr(self.cfg, "cuda_graph", False):
            torch.compiler.cudagraph_mark_step_begin()
        if cache is not None:
            losses, state = cache.first_pass(eng, batches)
            if not self._finite(losses["loss"]):
                return self._skip()
            for i in range(n):
                eng.set_gradient_accumulation_boundary(i == n - 1)
                eng.backward(cache.second_pass(eng, state, i), scale_wrt_gas=False)
        else:
            losses = {}
            for i, batch in enumerate(batches):
                eng.set_gradient_accumulation_boundary(i == n - 1)
                out = compute(batch)
                if not self._finite(out["loss"]):
                    return self._skip()
                eng.backward(out["loss"])  # DeepSpeed divides by gradient_accumulation_steps: the mean
                for k, v in out.items():
                    v = v.detach() if torch.is_tensor(v) else v
                    losses[k] = losses.get(k, 0) + v / n
        eng.step()
        self.bad_in_row = 0
        self.step += 1
        return losses

    # -------------------------------------------------------------------------------------------- the loop
    def fit(self, epoch_batches: Callable[[int, int], Iterable[dict]], compute: Callable[[dict], dict],
            after_step: Callable[[], dict | None] | None = None, cache=None) -> list[dict]:
        """Train from the current position to ``tcfg.steps``. ``epoch_batches(epoch, start)``: this rank's batches
        of an epoch from batch ``start`` on. ``after_step()`` runs after each optimiser step; a dict it returns
        (validation metrics) joins that step's history record. Saves every ``save_every`` steps and at the end; returns the history
        (rank 0: the whole run's, resumed runs included; other ranks: []). With train.accum_steps = N every N
        micro-batches make one step (accum_step; ``cache``: accum_mode "cache"); an epoch's last micro-batches that
        do not fill N are dropped."""
        from tqdm import tqdm

        cfg, rank = self.cfg, self.rank
        history_file = self.out_dir / "history.jsonl"
        history = read_history(history_file, self.step) if rank == 0 else []
        writer = tb_writer(self.out_dir, rank)
        bar = tqdm(total=cfg.steps, initial=min(self.step, cfg.steps), desc=self.desc,
                   disable=rank != 0 or self.quiet, mininterval=1.0)
        t_last, n_last = time.perf_counter(), self.step
        # SIGTERM / SIGINT only set a flag; guard.check() (one all-reduce per step) gives every rank the same
        # decision, also for timed checkpoints (train.save_minutes); a stop saves within train.stop_grace_s
        guard = StopGuard(cfg.stop_grace_s, cfg.save_minutes, rank).__enter__()
        try:
            while self.step < cfg.steps and not self.stopped:
                group = []
                for batch in epoch_batches(self.epoch, self.position):
                    self.position += 1
                    if self.accum > 1:
                        group.append(batch)
                        if len(group) < self.accum:
                            continue
                        losses, group = self.accum_step(group, compute, cache), []
                    else:
                        losses = self.train_step(batch, compute)
                    if losses is None:
                        continue
                    extra = after_step() if after_step is not None else None  # e.g. validation metrics, logged
                    rec = {k: float(v.detach() if torch.is_tensor(v) else v)
                           for k, v in {**losses, **(extra or {})}.items()}
                    rec.update(step=self.step, lr=self.schedule.get_last_lr()[0], skipped=self.skipped)
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        now = time.perf_counter()
                        rec["samples_per_s"] = ((self.step - n_last) * cfg.batch_size * self.accum * self.world
                                                / (now - t_last))
                        t_last, n_last = now, self.step
                        bar.set_postfix({k: f"{rec[k]:.4g}" for k in (*self.show, "samples_per_s") if k in rec})
                        if writer is not None:
                            for k, v in rec.items():
                                if k != "step":
                                    writer.add_scalar(f"{self.desc}/{k}", v, self.step)
                    if rank == 0:
                        history.append(rec)
                        append_history(history_file, rec)
                    bar.update(1)
                    stop, save_due = guard.check()  # THE place a stop request takes effect
                    if stop:
                        self.stopped = True
                        break
                    if (save_due or (cfg.save_every and self.step % cfg.save_every == 0)) and self.step < cfg.steps:
                        self.save()
                        guard.saved()
                    if self.step >= cfg.steps:
                        break
                else:
                    self.epoch, self.position, self.offset = self.epoch + 1, 0, 0
            bar.close()
            if writer is not None:
                writer.close()
            if self.stopped:  # save under the guard's grace, then exit 128 + signal with a one-line message
                tag = self.save()
                raise guard.preempted(self.ckpt_dir / tag, self.step)
        finally:
            guard.__exit__(None, None, None)
        self.save()
        return history

    def full_state_dict(self) -> dict | None:
        """The whole model's state dict (ZeRO-3: gathered, on rank 0 only; collective)."""
        return full_state_dict(self.engine)

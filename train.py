"""
Train a nano360 model: setup -> model -> FSDP2 -> the loop (train_step, log, validate, save).

    python train.py                                     the toy model on data/tiny (config/toy.py),
                                                        minutes on a CPU
    python train.py config/neo7b.py --dry_run --world_size=64   parameters, FLOPs and memory per GPU
    python train.py config/toy.py --max_steps=200 --out_dir=out/short --resume=auto
    torchrun --standalone --nproc_per_node=8 train.py config/neo7b.py     one process per GPU, FSDP2
    python train.py --consolidate out/toy/ckpt_0000400 [model.pt]   the model's weights in one file

A config file is plain Python assignments; --key=value overrides it. Every field of
config.TrainConfig and of config.ModelConfig is a key.
"""
import sys

from config import help_text, load_config, pop_flag, read_values, run_command, shown


def parse(argv):
    """train.py's command line: ("consolidate", CKPT, OUT) or (TrainConfig, ModelConfig).
    --help prints every key with its value and what it does."""
    argv = list(argv)
    if "--help" in argv or "-h" in argv:
        argv = [a for a in argv if a not in ("--help", "-h")]
        path, values = read_values(argv)
        flags = " and your flags" if any(a.startswith("--") for a in argv) else ""
        print(f"{__doc__.strip()}\n\nEvery key, with its value from {shown(path)}{flags}:\n")
        print(help_text({k: v for k, (v, _) in values.items()}))
        sys.exit(0)
    ckpt = pop_flag(argv, "--consolidate")
    if ckpt:  # python train.py --consolidate CKPT [OUT.pt]
        return "consolidate", ckpt, argv[0] if argv else None
    return load_config(argv)


if __name__ == "__main__":  # --help and a config mistake answer now, before torch loads (seconds)
    ARGS = run_command(parse, done=False)

import json, math, os, random, signal, time  # noqa: E402 (after parse)
from contextlib import contextmanager
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import data
from checkpoint import (Checkpointer, CheckpointError, RunLock, barrier, config_of, consolidate,
                        damage, read_meta, run_file, step_of)
from config import (ConfigError, git_revision, global_batch, place, resolve_vocab,
                    uses_bf16)
from model import GPT, autocast, doc_ids, sample_text, validation_loss
from parallel import (build_model, check_kernels, clip_grads, make_optimizer, peak_flops,
                      setup_distributed)
from plots import read_jsonl
from stage import DataError, sha256_file
from tokenizer import check_tokenizer, tokenizer_of, tokenizer_size


class TrainingError(Exception):
    """A run that cannot go on (too many NaN losses): the message names the step."""


# keys the batch of every step depends on (with the manifest and the global batch):
# resume refuses a change
ORDER_KEYS = ("seq_len", "seed", "mixture", "fim_rate", "fim_spm_rate", "fim_sources")


def print0(msg, file=None):
    """The one way to print during a run: on rank 0 only, above the progress bar."""
    if place()[0] == 0:
        tqdm.write(msg, file=file)


def on_rank0(fn):
    """fn() on rank 0 alone. An error there is raised on every rank (the others would wait for
    rank 0 until dist_timeout); the others get None."""
    out, err = None, None
    if place()[0] == 0:
        try:
            out = fn()
        except (ConfigError, DataError) as e:
            err = e
    if dist.is_initialized():
        box = [None if err is None else str(err)]
        dist.broadcast_object_list(box, src=0)
        if box[0] is not None and err is None:
            raise ConfigError(f"on rank 0: {box[0]}")
    if err:
        raise err
    return out


def lr_at(step, cfg):
    """Learning rate of step (0-based): linear warmup to lr, then cfg.schedule down to min_lr."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = cfg.max_steps - cfg.decay_steps
    if cfg.schedule == "wsd":  # warmup, stable, then a linear decay over the last decay_steps
        return (cfg.lr if step < decay_start
                else cfg.lr + (cfg.min_lr - cfg.lr) * (step - decay_start + 1) / cfg.decay_steps)
    # MAP-Neo's decay phase: half-life decay_steps / 2
    if cfg.schedule == "cosine_exp" and step > decay_start:
        return max(cfg.min_lr,
                   lr_at(decay_start, cfg) * 0.5 ** ((step - decay_start) / (cfg.decay_steps / 2)))
    horizon = cfg.schedule_steps or cfg.max_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, horizon - cfg.warmup_steps))
    if cfg.schedule == "linear":
        return cfg.lr + (cfg.min_lr - cfg.lr) * progress
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


# -----------------------------------------------------------------------------
# the learning-rate schedule, and what moves it

# keys the learning rate of every step depends on: a resume that changes one is warned
SCHEDULE_KEYS = ("schedule", "lr", "min_lr", "max_steps", "warmup_steps", "schedule_steps",
                 "decay_steps")


def horizon(cfg):
    """Where cfg's schedule decays: the step cosine / linear reach min_lr, or the decay phase of
    wsd / cosine_exp as (first step, last step)."""
    if cfg.schedule in ("wsd", "cosine_exp"):
        return (cfg.max_steps - cfg.decay_steps, cfg.max_steps)
    return cfg.schedule_steps or cfg.max_steps


def fmt_time(s):
    if s >= 3600:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 60)}m{int(s % 60):02d}s"


@contextmanager
def stop_requests():
    """A list that Ctrl-C or a scheduler's SIGTERM appends to: the loop then finishes its step,
    saves and exits. A second signal aborts at once."""
    stop = []

    def on_signal(sig, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(sig)
        print0(f"{signal.Signals(sig).name}: stopping after this step to save a checkpoint "
               "(again to abort)")
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# -----------------------------------------------------------------------------
# training

class Trainer:
    """One rank's part of a run: setup (data, model, optimizer, resume) in __init__, then fit()."""

    def __init__(self, cfg, mcfg, rank, world_size, device, mesh):
        self.cfg, self.mcfg, self.rank, self.world_size = cfg, mcfg, rank, world_size
        self.device, self.mesh = device, mesh
        self.bf16 = uses_bf16(cfg, device.type)
        self.autocast = autocast(device, self.bf16 and mesh is None)  # FSDP2 casts by its policy
        check_kernels(cfg, device)
        self.ckpt = Checkpointer(cfg.out_dir, rank, cfg.keep_last, cfg.keep_every, cfg.async_ckpt)
        self.resume_from = self.find_resume()
        self.resume_meta = read_meta(self.resume_from) if self.resume_from else None
        self.finished = bool(self.resume_meta) and self.resume_meta["step"] >= cfg.max_steps
        if self.finished:  # nothing to set up: train() says so
            return
        self.setup_data()
        self.model = build_model(mcfg, device, cfg.seed, cfg, mesh, self.bf16)
        self.optimizer = make_optimizer(self.model, cfg, device)
        self.metrics_path = run_file(cfg.out_dir, "metrics.jsonl")
        self.start = self.resume()
        self.metrics, self.wandb = self.open_metrics(), self.open_wandb()
        self.tokens_per_step = self.gb * cfg.seq_len
        self.flops_per_token, self.peak = self.model.estimate_flops(cfg.seq_len), peak_flops(device)
        self.stop, self.bad = [], 0
        print0(f"{self.model.num_params():,} parameters | "
               f"{self.tokens_per_step:,} tokens/step ({self.gb} x {cfg.seq_len}, "
               f"{self.accum} micro-batch{'es' * (self.accum > 1)} of {self.micro} x {world_size} "
               f"rank{'s' * (world_size > 1)}) | "
               f"{self.batches.n:,} samples/epoch | "
               f"{device}{', FSDP2 ' + cfg.fsdp if mesh else ''}"
               # float sums differ between CPU instruction sets: the figures say which
               f"{f' ({torch.backends.cpu.get_cpu_capability()})' if device.type == 'cpu' else ''}, "
               f"{'bf16' if self.bf16 else 'fp32'}")

    def find_resume(self):
        """The checkpoint this run goes on from, found undamaged; None for a fresh run."""
        cfg = self.cfg
        if cfg.resume == "" and Checkpointer.newest(cfg.out_dir):
            raise ConfigError(f"{cfg.out_dir} already holds checkpoints: "
                              "pass --resume=auto to continue that run, "
                              "or choose another out_dir")
        if cfg.resume == "auto":
            return self.ckpt.good_newest()
        if cfg.resume:
            problem = damage(cfg.resume)
            if problem:
                raise CheckpointError(f"{problem}; --resume=auto would take "
                                      "the newest good checkpoint")
        return cfg.resume or None

    def setup_data(self):
        cfg = self.cfg
        self.manifest = on_rank0(lambda: data.tokenized(cfg))  # rank 0 makes the data once
        if self.rank != 0:
            self.manifest = data.load_manifest(cfg.tokens_dir, hash_shards=False)
        self.enc = tokenizer_of(cfg.tokens_dir, self.manifest)
        resolve_vocab(self.mcfg, self.enc.n_vocab)
        if cfg.seq_len > self.mcfg.max_seq_len:
            raise ConfigError(f"seq_len={cfg.seq_len} is longer than "
                              f"max_seq_len={self.mcfg.max_seq_len}")
        self.gb, self.micro = self.batch_split()
        self.accum = self.gb // (self.micro * self.world_size)
        self.batches = data.Batches.from_config(cfg, self.gb)  # the shards were checked just above
        if cfg.mixture:
            epochs = self.batches.epochs(cfg.max_steps).items()
            print0("epochs per source over the run: "
                   + ", ".join(f"{k} {v:.2f}" for k, v in epochs))
            for k, (first, weights) in enumerate(cfg.mixture):
                if first >= cfg.max_steps:
                    print0(f"note: mixture phase {k} ({weights}) starts at step {first}, "
                           f"after max_steps={cfg.max_steps}: this run never reaches it")
        self.val = data.val_sequences(cfg.tokens_dir, self.manifest, cfg.seq_len, cfg.eval_seqs)
        self.eot = self.manifest["eot"] if cfg.doc_mask else None

    def batch_split(self):
        """(global batch, micro-batch per rank). A resumed run whose global_batch_size is not set
        keeps its checkpoint's global batch (the data order depends on it), so that it resumes
        at any world size; its micro-batch then divides its share of the batch."""
        cfg, ws = self.cfg, self.world_size
        gb, micro = global_batch(cfg, ws), cfg.batch_size
        theirs = self.resume_meta["data_position"]["global_batch"] if self.resume_meta else gb
        if not cfg.global_batch_size and theirs != gb:
            if theirs % ws:
                raise ConfigError(f"{self.resume_from} was trained with a global batch of "
                                  f"{theirs} sequences, which {ws} ranks cannot split: "
                                  f"resume on a number of ranks that divides {theirs}")
            gb, micro = theirs, math.gcd(theirs // ws, cfg.batch_size)
            print0(f"resuming with the global batch of {self.resume_from}: "
                   f"{gb} sequences per step (not {global_batch(cfg, ws)}: "
                   f"global_batch_size is not set), micro-batches of {micro} per rank")
        if gb % (micro * ws):
            raise ConfigError(f"global_batch_size={gb} is not a multiple of "
                              f"batch_size={micro} x {ws} ranks")
        return gb, micro

    def resume(self):
        """The first step: that of the checkpoint resumed (after checking that it trained this
        model on this data in this order), or 0 (from --init_from's weights if given). A
        resumed run sets aside the checkpoints newer than the one it resumed from."""
        cfg, path = self.cfg, self.resume_from
        if path:
            self.check_same_run(path, self.resume_meta)
            meta = self.ckpt.load(path, self.model, self.optimizer, checked=True)
            start = meta["step"]
            print0(f"resuming from {path} at step {start} (saved by {meta['world_size']} "
                   f"rank{'s' * (meta['world_size'] > 1)}, now {self.world_size})")
            self.check_schedule(config_of(path, meta)[0], start)
            newer = [p for p in Checkpointer.complete(cfg.out_dir) if step_of(p) > start]
            self.ckpt.set_aside(newer, f"newer than step {start}, which this run goes on from")
            barrier()
            return start
        if cfg.init_from:  # full weights into this (possibly sharded) model
            if os.path.isdir(cfg.init_from):
                raise ConfigError(f"--init_from={cfg.init_from} is a folder: give a file of "
                                  "weights (python train.py --consolidate CKPT writes one from "
                                  "a checkpoint, python eval.py import HF_DIR OUT.pt from a "
                                  "Hugging Face model)")
            from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                                 set_model_state_dict)
            try:
                weights = torch.load(cfg.init_from, map_location="cpu", weights_only=True)
            # a pickle weights_only refuses, a truncated file, no file
            except Exception as e:  # noqa: BLE001
                raise ConfigError(f"--init_from={cfg.init_from}: not a file of tensors "
                                  f"({type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:200]})") from None
            try:
                set_model_state_dict(self.model, weights.get("model", weights),
                                     options=StateDictOptions(full_state_dict=True))
            # another shape: say which, in one line
            except (RuntimeError, KeyError, ValueError, AttributeError) as e:
                raise ConfigError(f"--init_from={cfg.init_from} does not fit this model config: "
                                  f"{' '.join(str(e).split())[:300]}")
            print0(f"initialised from {cfg.init_from}")
        return 0

    def check_same_run(self, path, meta):
        """Refuse a checkpoint of other data, another tokenizer, another model, or another data
        order."""
        check_tokenizer(self.cfg.tokens_dir, self.manifest, meta.get("tokenizer_sha256"), path)
        if meta["manifest_sha256"] != self.manifest["sha256"]:
            raise DataError(f"{self.cfg.tokens_dir}/manifest.json has sha256 "
                            f"{self.manifest['sha256']}, but {path} was trained on data "
                            f"whose manifest has sha256 {meta['manifest_sha256']}")
        theirs = asdict(config_of(path, meta)[1])
        diff = {k: (v, getattr(self.mcfg, k)) for k, v in theirs.items()
                if getattr(self.mcfg, k) != v}
        if diff:
            raise ConfigError(f"{path} holds a different model: "
                              + ", ".join(f"{k}={a!r} there, {b!r} here"
                                          for k, (a, b) in diff.items()))
        if meta["data_position"]["global_batch"] != self.gb:
            raise ConfigError(f"{path} was trained with a global batch of "
                              f"{meta['data_position']['global_batch']} "
                              f"sequences, this run has {self.gb}: set --global_batch_size="
                              f"{meta['data_position']['global_batch']}")
        run, fim = (meta["config"]["train"],
                    meta["config"]["train"].get("fim_rate") or self.cfg.fim_rate)
        for key in ORDER_KEYS:  # the batch of every step is a function of these (data.Batches)
            there, here = run.get(key), json.loads(json.dumps(getattr(self.cfg, key)))
            if key in run and there != here and (fim or not key.startswith("fim_")):
                raise ConfigError(f"{path} was trained with {key}={there!r}, "
                                  f"this run has {here!r}: resuming would change the data order; "
                                  f"set --{key}={there!r} or choose another out_dir")

    def check_schedule(self, theirs, start):
        """A warning when a resumed run's settings move its learning-rate schedule."""
        cfg = self.cfg
        keys = [k for k in SCHEDULE_KEYS if getattr(theirs, k) != getattr(cfg, k)]
        was, now = lr_at(start, theirs), lr_at(start, cfg)
        if keys and (horizon(theirs) != horizon(cfg) or not math.isclose(was, now)):
            changes = ", ".join(f"{k} {getattr(theirs, k)} -> {getattr(cfg, k)}" for k in keys)
            print0(f"warning: {changes} moves the learning-rate schedule of the run resumed: "
                   f"its horizon {horizon(theirs)} becomes {horizon(cfg)}, and step {start + 1} "
                   f"trains at lr {now:.2e} where the schedule had {was:.2e}"
                   + (f" (--schedule_steps={horizon(theirs)} keeps the old horizon)"
                      if cfg.schedule in ("cosine", "linear") and not cfg.schedule_steps else ""))

    def open_metrics(self):
        """metrics.jsonl in out_dir (rank 0), without the lines of steps after the one resumed
        and without torn lines (a crash or a full disk mid-write), replaced whole."""
        path = self.metrics_path
        if self.rank != 0:
            return open(os.devnull, "w")
        run_file(self.cfg.out_dir, "metrics.jsonl.tmp")  # a link at either is refused
        rows, torn = (read_jsonl(path, lambda r: isinstance(r.get("step"), int))
                      if os.path.exists(path) and self.start else ([], []))
        if torn:
            print0(f"{path}: {len(torn)} unreadable line{'s' * (len(torn) > 1)} left out "
                   "(written when a run was killed or its disk full)")
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows if r["step"] <= self.start)
        os.replace(path + ".tmp", path)
        return open(path, "a")

    def open_wandb(self):
        """A W&B run (rank 0, when wandb_project is set; wandb is imported only then), which gets
        every row of metrics.jsonl. Its id is kept in out_dir, so a resumed run goes on there."""
        cfg = self.cfg
        if self.rank != 0 or not cfg.wandb_project:
            return None
        try:
            import wandb
        except ImportError:
            raise ConfigError("wandb_project is set but wandb is not installed: "
                              "pip install wandb (or --wandb_project= to log without it)") from None
        id_file = run_file(cfg.out_dir, "wandb_id")
        if not os.path.exists(id_file):
            open(id_file, "w").write(os.urandom(4).hex())  # an id W&B accepts
        return wandb.init(project=cfg.wandb_project, id=open(id_file).read().strip(),
                          name=cfg.wandb_name or os.path.basename(os.path.abspath(cfg.out_dir)),
                          resume="allow", config=dict(train=asdict(cfg), model=asdict(self.mcfg)),
                          dir=cfg.out_dir)  # its files beside ours, not in the working folder

    def log(self, **row):
        if self.wandb:  # W&B's own names: loss, val/en, ...
            self.wandb.log({f"val/{k}" if "val" in row else k: v
                            for k, v in row.get("val", row).items()
                            if k != "step" and isinstance(v, (int, float))}, step=row["step"])
        try:
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()
        except OSError as e:
            raise TrainingError(f"writing {self.metrics_path} failed: {e.strerror or e}; "
                                "the newest checkpoint is "
                                f"{Checkpointer.newest(self.cfg.out_dir)}") from None

    def fit(self):
        cfg = self.cfg
        if self.start == 0:
            self.validate(0)
        self.t_start = time.time()
        bar = tqdm(range(self.start, cfg.max_steps), initial=self.start, total=cfg.max_steps,
                   desc="train", dynamic_ncols=True, mininterval=1.0,
                   disable=None if self.rank == 0 else True)
        with stop_requests() as self.stop:
            try:
                for step in bar:
                    t0 = time.time()
                    result = self.train_step(step)
                    if result is None:  # a NaN/inf loss: the update was skipped
                        continue
                    done = step + 1
                    self.log_step(done, *result, time.time() - t0)
                    if done % cfg.eval_interval == 0 or done == cfg.max_steps:
                        self.validate(done)
                    if done % cfg.ckpt_interval == 0 or done == cfg.max_steps or self.stop:
                        self.save(done)
                    if self.stop:
                        self.ckpt.wait()
                        print0(f"saved step {done} to {cfg.out_dir}; "
                               "--resume=auto continues from it")
                        raise KeyboardInterrupt
                self.ckpt.wait()
            finally:
                bar.close()
                self.metrics.close()
                if self.wandb:
                    self.wandb.finish()

    def train_step(self, step):
        """One optimizer step on this rank's share of step's global batch: (lr, mean loss over all
        ranks, gradient norm), or None when the loss is not finite and the update is skipped."""
        cfg, device = self.cfg, self.device
        lr = lr_at(step, cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g["lr_mult"]
        x = self.batches.batch(step, self.rank, self.world_size).to(device)
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per micro-batch
        for i, micro in enumerate(x.split(self.micro)):
            # FSDP2 reduces the gradients once, after the last micro-batch
            if self.mesh is not None:
                self.model.set_requires_gradient_sync(i == self.accum - 1)
            with self.autocast:
                docs = doc_ids(micro[:, :-1], self.eot) if self.eot is not None else None
                loss = self.model(micro[:, :-1], micro[:, 1:], doc_ids=docs) / self.accum
            loss.backward()
            loss_sum += loss.detach()
        # one reduction for the mean loss over ranks and for a stop requested on any rank
        flags = torch.stack([loss_sum.float(), torch.tensor(float(bool(self.stop)), device=device)])
        if dist.is_initialized():
            dist.all_reduce(flags)
        loss, stop_any = flags[0].item() / self.world_size, flags[1].item() > 0
        if stop_any and not self.stop:
            self.stop.append(signal.SIGTERM)
        # skip the update, keep the weights; too many in a row stop the run
        if not math.isfinite(loss):
            self.bad += 1
            self.optimizer.zero_grad(set_to_none=True)
            print0(f"step {step + 1}: loss is {loss}, update skipped ({self.bad} in a row)")
            self.log(step=step + 1, skipped=True, loss=str(loss))
            if self.bad >= cfg.max_bad_steps:
                raise TrainingError(f"step {step + 1}: {self.bad} steps in a row "
                                    "with a NaN or inf loss; stopping. "
                                    f"The last checkpoint is {Checkpointer.newest(cfg.out_dir)}")
            return None
        self.bad = 0
        gnorm = clip_grads(self.model, self.optimizer, cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return lr, loss, gnorm

    def log_step(self, done, lr, loss, gnorm, dt):
        cfg = self.cfg
        if not (done % cfg.log_interval == 0 or done == cfg.max_steps or done == self.start + 1):
            return
        tok_s = self.tokens_per_step / dt
        eta = (time.time() - self.t_start) / (done - self.start) * (cfg.max_steps - done)
        # per GPU
        mfu = self.flops_per_token * tok_s / (self.peak * self.world_size) if self.peak else None
        print0(f"step {done:6d}/{cfg.max_steps} | loss {loss:.4f} | lr {lr:.2e} | "
               f"gnorm {gnorm:.3f} | {dt * 1000:.0f} ms | {tok_s:,.0f} tok/s"
               f"{f' | mfu {100 * mfu:.1f}%' if mfu else ''} | eta {fmt_time(eta)}")
        self.log(step=done, loss=loss, lr=lr, grad_norm=gnorm, dt=dt, tok_per_s=tok_s, mfu=mfu,
                 mem=(torch.cuda.max_memory_allocated(self.device)
                      if self.device.type == "cuda" else None))

    def validate(self, step):
        losses = validation_loss(self.model, self.val, self.cfg.batch_size, self.device,
                                 self.autocast, self.eot)
        print0(f"step {step:6d} | val " + " | ".join(f"{k} {v:.4f}" for k, v in losses.items()))
        self.log(step=step, val=losses)

    def save(self, step):
        cfg, gb = self.cfg, self.gb
        meta = dict(step=step, config=dict(train=asdict(cfg), model=asdict(self.mcfg)),
                    git=git_revision(), tokens_dir=cfg.tokens_dir,
                    manifest_sha256=self.manifest["sha256"], world_size=self.world_size,
                    tokenizer_sha256=self.manifest.get("tokenizer_sha256"),
                    data_position=dict(step=step, global_batch=gb, samples=step * gb,
                                       tokens=step * gb * cfg.seq_len,
                                       epoch=step * gb / self.batches.n,
                                       # what a release's data order is checked against
                                       last_batch_sha256=(self.batches.sha256(step - 1)
                                                          if step else None)),
                    # the log so far, which a release's verify holds its run/metrics.jsonl to
                    metrics=self.metrics_record(),
                    time=time.strftime("%Y-%m-%d %H:%M:%S"), torch=torch.__version__)
        self.ckpt.save(step, self.model, self.optimizer, meta)

    def metrics_record(self):
        """(bytes, sha256) of metrics.jsonl as it stands (rank 0's; a resume keeps these bytes:
        it drops only lines of later steps)."""
        if self.rank:
            return None
        self.metrics.flush()
        n = os.path.getsize(self.metrics_path)
        return dict(bytes=n, sha256=sha256_file(self.metrics_path, n))

    def sample(self):
        """A few samples at the end of the run, one per language of the toy corpus."""
        self.model.eval()
        gen = torch.Generator(device=self.device).manual_seed(self.cfg.seed)
        for prompt in ("Alice was beginning to", "子曰：", "def "):
            with self.autocast:
                text = "".join(sample_text(self.model, self.enc, prompt, self.cfg.sample_tokens,
                                           generator=gen))
            print0(f"--- {prompt!r} ---\n{prompt}{text}")


def train(cfg, mcfg):
    """Run cfg (one process, or one rank of torchrun) with out_dir locked; the trained model."""
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rank, world_size, device, mesh = setup_distributed(cfg)
    lock = None
    try:
        lock = on_rank0(lambda: RunLock(cfg.out_dir))
        trainer = Trainer(cfg, mcfg, rank, world_size, device, mesh)
        if trainer.finished:
            step, path = trainer.resume_meta["step"], trainer.resume_from
            print0(f"{path} is at max_steps: nothing to train (raise --max_steps to continue)"
                   if step == cfg.max_steps else
                   f"{path} is at step {step}, past max_steps={cfg.max_steps}: nothing to train "
                   f"(raise --max_steps above {step} to continue it, or give another --out_dir)")
            return None
        trainer.fit()
        if cfg.sample_tokens:
            trainer.sample()
        return trainer.model
    finally:
        if lock:
            lock.release()
        if dist.is_initialized():
            dist.destroy_process_group()


# -----------------------------------------------------------------------------
# dry run: the plan of a run, in seconds, without a GPU

def dry_run(cfg, mcfg):
    resolve_vocab(mcfg, tokenizer_size(cfg))
    with torch.device("meta"):
        model = GPT(mcfg)
    N, gib = model.num_params(), 2 ** 30
    gb, gpus = (global_batch(cfg, cfg.world_size),
                f"{cfg.world_size} GPU" + "s" * (cfg.world_size > 1))
    print(f"model       {mcfg.n_layer} layers, d_model {mcfg.d_model}, "
          f"{mcfg.n_head} heads x {mcfg.head_dim} "
          f"({mcfg.n_kv_head} kv), SwiGLU {mcfg.ffn_hidden}, vocab {mcfg.vocab_size}, {mcfg.norm}")
    print(f"parameters  {N:,} ({N / 1e9:.2f}B); non-embedding {model.num_params(True):,} "
          f"({model.num_params(True) / 1e9:.2f}B)")
    print(f"flops/token {model.estimate_flops(cfg.seq_len):.3e} training "
          f"(6N + causal attention at seq_len {cfg.seq_len})")
    per_step = cfg.batch_size * cfg.world_size
    if gb % per_step:
        print(f"batch       global_batch_size {gb} is not a multiple of "
              f"batch_size x world_size = {per_step}: "
              "train.py will refuse this")
    else:
        print(f"batch       {gb} x {cfg.seq_len} = {gb * cfg.seq_len:,} tokens/step: {gpus} "
              f"x micro-batch {cfg.batch_size} x {gb // per_step} accumulation steps")
    plan = model.estimate_memory(cfg.batch_size * cfg.seq_len, cfg.world_size,
                                 cfg.optim_state_dtype)
    print(f"memory/GPU  FSDP2 over {gpus} (estimate):")
    for k, v in plan.items():
        print(f"  {k:42s} {v / gib:9.2f} GiB")
    states = sum(v for k, v in plan.items() if not k.startswith("activations"))
    print(f"  {'total without / with activation checkpointing':42s} "
          f"{(states + plan['activations']) / gib:9.2f} / "
          f"{(states + plan['activations, full checkpointing']) / gib:.2f} GiB")


def main(argv=None, parsed=None):
    parsed = parsed or parse(sys.argv[1:] if argv is None else argv)
    if parsed[0] == "consolidate":
        return consolidate(*parsed[1:])
    cfg, mcfg = parsed
    return dry_run(cfg, mcfg) if cfg.dry_run else train(cfg, mcfg)


if __name__ == "__main__":
    # CheckpointError is a DataError
    run_command(lambda argv: main(parsed=ARGS), DataError, TrainingError)

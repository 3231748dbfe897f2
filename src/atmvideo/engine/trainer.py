"""The training loop: one :class:`Trainer` per process, driven by a resolved :class:`RunConfig`.

``Trainer.fit`` runs epochs of optimiser steps (gradient accumulation, mixed precision, DDP),
evaluates on the validation split, keeps ``last.pt`` / ``best.pt`` and the run's logs. A run that
is killed continues exactly where it stopped with ``resume="auto"``: the checkpoint holds model,
optimiser, scheduler, scaler, EMA, the position (epoch, step) and every process's RNG states;
the data order of an epoch is a function of (seed, epoch), so the resumed epoch skips the
batches already seen without loading them.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from atmvideo.engine import builders
from atmvideo.engine.checkpoint import (
    BEST,
    LAST,
    capture_rng_state,
    find_resume_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    state_dict_is_finite,
)
from atmvideo.engine.config import RunConfig, config_to_dict, dump_config
from atmvideo.engine.distributed import DistInfo, all_reduce_sum, barrier, gather_objects
from atmvideo.engine.evaluate import (
    progress_interval,
    score_dataset,
    share_metrics,
    summarize,
    write_evaluation_files,
)
from atmvideo.engine.optim import ModelEma, build_optimizer, build_scheduler, clip_gradients, unwrap_model
from atmvideo.engine.outputs import RunLogger, atomic_write_text, plot_curves
from atmvideo.engine.precision import (
    amp_dtype,
    autocast,
    configure_determinism,
    make_grad_scaler,
    seed_everything,
)

__all__ = ["NonFiniteLossError", "TrainState", "Trainer"]

_logger = logging.getLogger(__name__)

# evaluation metrics copied into history.jsonl as val_<name>
_HISTORY_METRICS = ("top1", "top5", "mean_class_acc", "mAP", "num_samples")


class NonFiniteLossError(RuntimeError):
    """The loss (or the weights) became NaN or infinite; training stopped before using it."""


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # epoch in progress (0-based)
    step_in_epoch: int = 0  # optimiser steps already done in that epoch
    global_step: int = 0  # optimiser steps done in total
    best_metric: float = -math.inf
    best_epoch: int = -1
    loss_sum: float = 0.0  # sum of per-clip losses of the epoch so far (for the epoch mean)
    loss_count: int = 0
    train_time: float = 0.0  # seconds spent in training steps over all epochs


class _SkipBatches:
    """A batch sampler that drops the first ``skip`` batches of another one (resume inside an epoch)."""

    def __init__(self, batch_sampler: Any, skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


def _skip_batches(loader: DataLoader, skip: int) -> DataLoader:
    """The same loader without its first ``skip`` batches; indices are skipped, not loaded."""
    if skip <= 0:
        return loader
    workers = loader.num_workers
    return DataLoader(
        loader.dataset,
        batch_sampler=_SkipBatches(loader.batch_sampler, skip),
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context if workers else None,
        generator=loader.generator,
        prefetch_factor=loader.prefetch_factor if workers else None,
        persistent_workers=loader.persistent_workers if workers else False,
    )


def _set_epoch(loader: DataLoader, epoch: int, seed: int, rank: int) -> None:
    """Make the epoch's data order and worker seeds functions of (seed, epoch, rank) alone.

    The sampler shuffles by (seed, epoch); the loader's generator, which seeds the workers, is
    re-seeded too, so a run resumed at an epoch boundary gets the same worker random streams.
    """
    for obj in (loader.sampler, getattr(loader.batch_sampler, "sampler", None), loader.batch_sampler):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            break
    if loader.generator is not None:
        loader.generator.manual_seed(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))


def _current_lr(optimizer: torch.optim.Optimizer) -> float:
    return max(group["lr"] for group in optimizer.param_groups)


class Trainer:
    """Builds everything from the config and trains; one instance per process."""

    def __init__(
        self, cfg: RunConfig, out_dir: str | Path, dist: DistInfo, *, resume: str | None = None
    ) -> None:
        self.cfg = cfg
        self.out = Path(out_dir)
        self.dist = dist
        self.device = dist.device
        t = cfg.train
        configure_determinism(t.deterministic)
        seed_everything(t.seed + dist.rank)
        self.logger = RunLogger(self.out, enabled=dist.is_main, tensorboard=t.tensorboard)
        resume_path = find_resume_checkpoint(self.out, resume)
        if resume is None and (self.out / LAST).is_file():
            raise FileExistsError(
                f"{self.out} already holds a run ({LAST}); continue it with --resume auto "
                "or choose another --output"
            )
        ckpt = load_checkpoint(resume_path) if resume_path else None
        self._build_data()
        # weights: pretrained only for a fresh run (a resumed one gets them from the checkpoint)
        self.model = self._build_model(pretrained=ckpt is None)
        self._build_optimization()
        self.state = TrainState()
        self._metrics: dict[str, Any] = {}  # the latest evaluation (restored on resume)
        self._resume_rng: dict[str, Any] | None = None
        if ckpt is not None:
            self._load(ckpt, resume_path)

        # wrappers come last: checkpoints hold the plain model's state dict
        net: nn.Module = self.model
        if dist.distributed:
            net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if t.compile:
            net = torch.compile(net)
        self.net = net
        if dist.is_main:
            atomic_write_text(self.out / "config.yaml", dump_config(cfg))
        self._last_predictions = None

    # ----------------------------------------------------------------------------------- construction

    def _build_data(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        self.train_set = builders.build_dataset_for(cfg, "train", train=True)
        self.val_set = builders.build_dataset_for(cfg, "val", train=False, views=t.val_views)
        self.num_classes = builders.resolve_num_classes(cfg, self.train_set)
        names = list(getattr(self.train_set, "class_names", None) or [])
        self.class_names = (
            names if len(names) == self.num_classes else [str(i) for i in range(self.num_classes)]
        )
        self.multi_label = bool(getattr(self.train_set, "multi_label", False))
        self.train_loader = builders.build_train_loader(cfg, self.train_set, self.dist)
        self.val_loader = builders.build_eval_loader(cfg, self.val_set, self.dist, t.val_views)
        self.steps_per_epoch = len(self.train_loader) // t.accum_steps

    def _build_model(self, *, pretrained: bool) -> nn.Module:
        t = self.cfg.train
        model = builders.build_model(self.cfg.model, self.num_classes, pretrained=pretrained).to(self.device)
        if t.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if t.sync_bn and self.dist.distributed:
            if self.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            else:
                _logger.warning("train.sync_bn needs CUDA; ignored on %s", self.device.type)
        return model

    def _build_optimization(self) -> None:
        o, t = self.cfg.optim, self.cfg.train
        self.optimizer = build_optimizer(
            self.model,
            name=o.name,
            lr=o.lr,
            weight_decay=o.weight_decay,
            momentum=o.momentum,
            betas=(o.betas[0], o.betas[1]),
            layer_decay=o.layer_decay,
        )
        self.scheduler = build_scheduler(
            self.optimizer,
            name=o.schedule,
            epochs=t.epochs,
            steps_per_epoch=self.steps_per_epoch,
            warmup_epochs=o.warmup_epochs,
            milestones=o.milestones,
            gamma=o.gamma,
            min_lr=o.min_lr,
            warmup_lr=o.warmup_lr,
        )
        self.amp_dtype = amp_dtype(t.amp, self.device)
        self.scaler = make_grad_scaler(self.device, self.amp_dtype)
        self.ema = ModelEma(self.model, decay=t.ema_decay) if t.ema else None
        self.mixup = builders.train_mixup(self.cfg, self.num_classes)
        self.criterion = builders.build_criterion(
            self.cfg, multi_label=self.multi_label, mixup=self.mixup is not None
        )

    # ----------------------------------------------------------------------------------- checkpoints

    def _load(self, ckpt: dict[str, Any], path: Path | None) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                self.ema.load_state_dict(ckpt["ema"])
            else:
                _logger.warning("%s has no EMA weights; the EMA restarts from the current weights", path)
        self.state = TrainState(**ckpt["state"])
        self._metrics = dict(ckpt.get("metrics") or {})
        rng = ckpt.get("rng") or []
        if len(rng) == self.dist.world_size:
            self._resume_rng = rng[self.dist.rank]
        else:
            _logger.warning(
                "%s was saved by %d process(es), this run has %d: random streams restart from the seed",
                path,
                len(rng),
                self.dist.world_size,
            )
        if self.dist.is_main:
            _logger.info(
                "resumed from %s at epoch %d, step %d (global step %d)",
                path,
                self.state.epoch + 1,
                self.state.step_in_epoch,
                self.state.global_step,
            )

    def _checkpoint(self, *, full: bool, metrics: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The checkpoint dict on rank 0 (None elsewhere); collective: every process must call it."""
        weights = unwrap_model(self.model).state_dict()
        # checked on every process (the weights are replicas) so that all of them stop together
        if not state_dict_is_finite(weights):
            raise NonFiniteLossError(
                f"the weights contain NaN/inf at global step {self.state.global_step}; "
                f"not overwriting the last good checkpoint in {self.out}"
            )
        rng = gather_objects(capture_rng_state()) if full else None
        if not self.dist.is_main:
            return None
        ckpt: dict[str, Any] = {
            "model": weights,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "state": asdict(self.state),
            "config": config_to_dict(self.cfg),
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "multi_label": self.multi_label,
            "metrics": dict(metrics or {}),
        }
        if full:
            ckpt.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict() if self.scaler is not None else None,
                rng=rng,
            )
        return ckpt

    def save_last(self, metrics: dict[str, Any] | None = None) -> None:
        """Write ``last.pt`` (everything needed to resume); collective."""
        ckpt = self._checkpoint(full=True, metrics=metrics)
        if ckpt is not None:
            save_checkpoint(ckpt, self.out / LAST)
        barrier()

    def save_best(self, metrics: dict[str, Any]) -> None:
        """Write ``best.pt`` (weights, EMA, config, class names, metrics; no optimiser state)."""
        ckpt = self._checkpoint(full=False, metrics=metrics)
        if ckpt is not None:
            save_checkpoint(ckpt, self.out / BEST)

    # ----------------------------------------------------------------------------------- training

    def _train_epoch(self, epoch: int) -> float:
        """One epoch of optimiser steps (from ``state.step_in_epoch`` on); returns the mean loss."""
        t, s = self.cfg.train, self.state
        accum = t.accum_steps
        self.net.train()
        _set_epoch(self.train_loader, epoch, t.seed, self.dist.rank)
        loader = _skip_batches(self.train_loader, s.step_in_epoch * accum)
        if self._resume_rng is not None:
            restore_rng_state(self._resume_rng)
            self._resume_rng = None
        # creating an iterator may draw a worker seed from torch's global RNG (loaders without a
        # generator of their own): keep the training stream independent of it for exact resumes
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            batches = iter(loader)
        micro_total = self.steps_per_epoch * accum
        micro_done = s.step_in_epoch * accum
        bar = tqdm(
            total=micro_total,
            initial=micro_done,
            desc=f"epoch {epoch + 1}/{t.epochs}",
            disable=not (t.progress and self.dist.is_main),
            dynamic_ncols=True,
            mininterval=progress_interval(),
        )
        start, clips_seen = time.perf_counter(), 0
        stats = torch.zeros(2, dtype=torch.float64, device=self.device)
        for micro in range(micro_done, micro_total):
            clips, targets, _ = next(batches)
            clips = clips.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if self.mixup is not None:
                clips, targets = self.mixup(clips, targets)
            last_micro = (micro + 1) % accum == 0
            sync = nullcontext() if last_micro or not self.dist.distributed else self.net.no_sync()
            with sync:
                with autocast(self.device, self.amp_dtype):
                    logits = self.net(clips)
                loss = self.criterion(logits.float(), targets)
                scaled = loss / accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            batch = clips.shape[0]
            stats.zero_()
            stats[0] += loss.detach().double() * batch
            stats[1] += batch
            all_reduce_sum(stats)  # every process sees a NaN anywhere, and stops at the same step
            loss_sum, count = stats.tolist()  # the one host sync of a step
            if not math.isfinite(loss_sum):
                self._stop_on_nonfinite(epoch, loss_sum)
            s.loss_sum += loss_sum
            s.loss_count += int(count)
            clips_seen += int(count)
            bar.update(1)
            if not last_micro:
                continue
            self._optimizer_step()
            s.step_in_epoch += 1
            s.global_step += 1
            elapsed = time.perf_counter() - start
            if s.global_step % t.log_every_steps == 0 or s.step_in_epoch == self.steps_per_epoch:
                lr = _current_lr(self.optimizer)
                rate = clips_seen / max(elapsed, 1e-9)
                bar.set_postfix(
                    loss=f"{s.loss_sum / max(s.loss_count, 1):.4f}", lr=f"{lr:.3g}", clips_s=f"{rate:.1f}"
                )
                self.logger.log_scalars(
                    "train", {"loss": loss_sum / count, "lr": lr, "clips_per_s": rate}, s.global_step
                )
            if (
                t.save_every_steps
                and s.global_step % t.save_every_steps == 0
                and s.step_in_epoch < self.steps_per_epoch
            ):
                s.train_time += time.perf_counter() - start
                start, clips_seen = time.perf_counter(), 0
                self.save_last()
        bar.close()
        s.train_time += time.perf_counter() - start
        return s.loss_sum / max(s.loss_count, 1)

    def _optimizer_step(self) -> None:
        clip = self.cfg.optim.clip_grad_norm
        if self.scaler is not None:
            if clip > 0:
                self.scaler.unscale_(self.optimizer)
                clip_gradients(self.model, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip > 0:
                clip_gradients(self.model, clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, step=self.state.global_step)

    def _stop_on_nonfinite(self, epoch: int, value: float) -> None:
        s = self.state
        last = self.out / LAST
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint had been saved yet"
        message = (
            f"non-finite training loss ({value}) at epoch {epoch + 1}, step {s.step_in_epoch + 1} "
            f"(global step {s.global_step + 1}); training stopped before applying it and {kept}. "
            "Lower optim.lr or set optim.clip_grad_norm (with train.amp=fp16, try bf16)."
        )
        self.logger.append_history(
            {"event": "nonfinite_loss", "epoch": epoch + 1, "global_step": s.global_step}
        )
        raise NonFiniteLossError(message)

    # ----------------------------------------------------------------------------------- evaluation

    def evaluate(self, model: nn.Module, desc: str, *, keep_predictions: bool = False) -> dict[str, Any]:
        """Metrics of ``model`` on the validation split, on every process (rank 0 may keep predictions)."""
        pred = score_dataset(
            model,
            self.val_loader,
            self.dist,
            fusion=self.cfg.eval.fusion,
            amp_dtype=self.amp_dtype,
            progress=self.cfg.train.progress,
            desc=desc,
        )
        metrics = summarize(pred, with_map=self.cfg.eval.with_map) if pred is not None else None
        if pred is not None and keep_predictions:
            self._last_predictions = pred
        return share_metrics(metrics)

    @property
    def metric_name(self) -> str:
        """The metric that decides ``best.pt``."""
        return "mAP" if self.multi_label else "top1"

    # ----------------------------------------------------------------------------------- main loop

    def fit(self) -> dict[str, Any]:
        """Train for ``train.epochs`` (from wherever the state stands) and return the last metrics."""
        t, s = self.cfg.train, self.state
        metrics = self._metrics
        if self.dist.is_main:
            _logger.info(
                "training %s: %d train / %d val clips, %d classes, %d steps per epoch, %d process(es) on %s",
                self.cfg.model.name,
                len(self.train_set),
                len(self.val_set),
                self.num_classes,
                self.steps_per_epoch,
                self.dist.world_size,
                self.device,
            )
        for epoch in range(s.epoch, t.epochs):
            s.epoch = epoch
            train_loss = self._train_epoch(epoch)
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "global_step": s.global_step,
                "train_loss": train_loss,
                "lr": _current_lr(self.optimizer),
                "train_time": s.train_time,
            }
            last_epoch = epoch + 1 == t.epochs
            if (epoch + 1) % t.eval_every == 0 or last_epoch:
                metrics = self._evaluate_epoch(epoch, record)
            s.epoch, s.step_in_epoch, s.loss_sum, s.loss_count = epoch + 1, 0, 0.0, 0
            # history first: a kill between the two repeats this epoch's record, never loses it
            self.logger.append_history(record)
            self.save_last(metrics)
            self.logger.log_scalars("epoch", record, epoch + 1)
            if self.dist.is_main:
                plot_curves(self.logger.history_path, self.out / "curves.png")
                summary = ", ".join(f"{k}={v:.4g}" for k, v in record.items() if isinstance(v, float))
                _logger.info("epoch %d/%d: %s", epoch + 1, t.epochs, summary)
        self._finish(metrics)
        return metrics

    def _evaluate_epoch(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        s = self.state
        # the plain model, not the DDP wrapper: shards may differ by one batch, and every DDP forward
        # is a collective (buffer broadcast) that would wait forever for the process with fewer batches
        metrics = self.evaluate(self.model, "val", keep_predictions=True)
        if self.ema is not None and self.cfg.eval.use_ema:
            ema_metrics = self.evaluate(self.ema.module, "val-ema")
            metrics.update({f"ema_{k}": v for k, v in ema_metrics.items() if k != "num_samples"})
        metrics["epoch"] = epoch + 1
        metrics["views"] = self.cfg.train.val_views
        value = float(metrics[self.metric_name])
        if value > s.best_metric:
            s.best_metric, s.best_epoch = value, epoch + 1
            self.save_best(metrics)
        metrics[f"best_{self.metric_name}"] = s.best_metric
        metrics["best_epoch"] = s.best_epoch
        metrics["train_time"] = s.train_time
        record.update(
            {f"val_{k}": v for k, v in metrics.items() if k in _HISTORY_METRICS or k.startswith("ema_")}
        )
        self.logger.write_metrics(metrics)
        self.logger.log_scalars("val", metrics, epoch + 1)
        return metrics

    def _finish(self, metrics: dict[str, Any]) -> None:
        if self.dist.is_main and self._last_predictions is not None:
            write_evaluation_files(
                self._last_predictions,
                metrics,
                self.out,
                self.class_names,
                dataset=self.val_set,
                save_predictions=self.cfg.eval.save_predictions,
            )
        self.logger.close()
        barrier()

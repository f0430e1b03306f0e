"""Train the yardstick VLM on CPU, resumably, and save numpy weights for the GGUF export.

    nice -n 19 python -m models.yardstick.train --out out/yardstick/run          # fresh run
    nice -n 19 python -m models.yardstick.train --out out/yardstick/run --resume # continue

Stage 1 trains the ViT alone with per-patch heads (colour, category, letter, object centre of
each patch; model.PatchHeads). Stage 2 trains the whole VLM on the answers, keeping the patch
loss. Every question about one image shares that image's prefix (system text + 256 image
tokens): the prefix runs through the LM once and all its questions attend to the cached K/V.
A checkpoint (model, optimiser, data order and RNG states) is written every --checkpoint-minutes
and at the end, so --resume continues the same run; the final weights go to --out as
vision.npz / text.npz / config.json (the names models.yardstick.export reads).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from models.easyvqa import weights
from models.easyvqa.data import PromptCodec, encode_questions, pixels, token_sets
from models.easyvqa.tokenizer import load_tokenizer
from models.easyvqa.train import Batches, Logger, answer_loss, lr_at, make_optimizer, step_optimizer

from . import model as ymodel
from .evaluate import by_kind
from .generator import DEFAULT_DATA, load_params, load_split
from .questions import referents

DEFAULT_RUN = Path("out/yardstick/run")  # relative to the repository root; out/ is git-ignored


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=DEFAULT_RUN, help="checkpoint, log and final weights")
    ap.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vision-steps", type=int, default=1200)
    ap.add_argument("--vision-batch", type=int, default=32)
    ap.add_argument("--vision-lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--images-per-step", type=int, default=8)
    ap.add_argument("--questions-per-kind", type=int, default=1, help="per image and step, of each kind")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--patch-loss", type=float, default=0.3, help="weight of the patch heads in stage 2")
    ap.add_argument("--proj-patch-loss", type=float, default=0.3, help="patch heads on the LM's image embeddings")
    ap.add_argument(
        "--readout-loss", type=float, default=0.5, help="named object's attributes after the grounded block"
    )
    ap.add_argument("--ground-loss", type=float, default=0.3, help="weight of the attention-grounding loss")
    ap.add_argument("--ground-layer", type=int, default=5, help="LM block (0-based) whose attention is grounded")
    ap.add_argument(
        "--save-weights", action="store_true", help="only write vision/text .npz + config.json from --out's checkpoint"
    )
    ap.add_argument("--init-vision", type=Path, help="pilot runs: take the ViT from this checkpoint, skip stage 1")
    ap.add_argument("--train-images", type=int, default=0, help="use only the first N train images (0 = all)")
    ap.add_argument("--val-images", type=int, default=100, help="val images for the progress checks")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0)
    ap.add_argument("--stop-after-minutes", type=float, default=0.0, help="checkpoint and exit (0 = never)")
    ap.add_argument(
        "--stop-at-step", type=int, default=0, help="checkpoint and exit at this stage-2 step (0 = never; see README)"
    )
    # 1 thread: on the shared 2-core machine under nice, 2 threads measured 3-4x slower per step
    # (and 4x the CPU time): they spin waiting for each other while other jobs hold a core
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args(argv)


class Run:
    """Everything a step needs: data, model, heads, codec, RNG, logger."""

    def __init__(self, args):
        self.args = args
        self.p = load_params()
        self.log = Logger(args.out / "train.log")
        train = load_split(args.data, "train")
        if args.train_images:
            keep = train.split.owner < args.train_images
            train.split.questions = [q for q, k in zip(train.split.questions, keep, strict=True) if k]
            train.split.answers = [a for a, k in zip(train.split.answers, keep, strict=True) if k]
            train.kinds = [t for t, k in zip(train.kinds, keep, strict=True) if k]
            train.split.owner = train.split.owner[keep]
            train.split.images = train.split.images[: args.train_images]
            train.scenes = train.scenes[: args.train_images]
        self.train, self.val = train, load_split(args.data, "val")
        self.codec = PromptCodec(load_tokenizer())
        s = self.train.split
        self.enc = encode_questions(self.codec, s.questions, s.answers)
        # questions_of[image][kind] -> question indices; a step asks one random question of each kind
        self.questions_of = [{} for _ in range(len(s.images))]
        for q, (r, kind) in enumerate(zip(s.owner, self.train.kinds, strict=True)):
            self.questions_of[r].setdefault(kind, []).append(q)
        labels, objects = self.cached_labels()
        self.labels = torch.from_numpy(labels)  # (n_images, n_patches, 7)
        self.targets = torch.from_numpy(self.ground_targets(objects))  # (n_questions, 2, n_patches) bool
        in_ids, out_ids = token_sets(self.codec, s.questions + self.val.split.questions, s.answers)
        self.model = ymodel.build(in_ids, out_ids)
        grid = ymodel.VISION.image_size // ymodel.VISION.patch_size
        self.heads = ymodel.PatchHeads(
            ymodel.VISION.n_embd, len(self.p["colors"]), len(self.p["shapes"]), len(self.p["letters"]), grid
        )
        # created after the stage-1 heads, so stage 1 and its checkpoints are the same with or without them
        self.aux = ymodel.ReadoutHeads(
            ymodel.TEXT.n_embd, len(self.p["colors"]), len(self.p["shapes"]), len(self.p["letters"]), grid
        )
        self.rng = np.random.default_rng(args.seed)
        self.val_q = np.flatnonzero(self.val.split.owner < args.val_images)

    def cached_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(patch labels (n_images, n_patches, 7), object index per patch (n_images, n_patches)), cached."""
        path = self.args.data / "train_patch_labels.npz"
        if path.is_file():
            with np.load(path) as z:
                labels, objects = z["labels"], z["objects"] if "objects" in z.files else None
        else:
            labels, objects = None, None
        grid = ymodel.VISION.image_size // ymodel.VISION.patch_size
        scenes = load_split(self.args.data, "train").scenes if labels is None or objects is None else None
        if labels is None:
            labels = np.stack([ymodel.patch_labels(sc, self.p, grid) for sc in scenes])
        if objects is None:
            objects = np.stack([ymodel.patch_objects(sc, self.p, grid) for sc in scenes])
        if scenes is not None:
            np.savez_compressed(path, labels=labels, objects=objects)
        n = len(self.train.split.images)
        return labels[:n], objects[:n]

    def ground_targets(self, objects: np.ndarray) -> np.ndarray:
        """(n_questions, 2, n_patches) bool: patches each half of the grounded block's heads should look at.

        Both halves: every referent's patches (questions.referents); for spatial and size questions
        the first half gets the first-named object, the second half the other. Also sets
        self.readout_targets (n_questions, 9), see model.readout_target.
        """
        s = self.train.split
        grid = ymodel.VISION.image_size // ymodel.VISION.patch_size
        out = np.zeros((len(s.questions), 2, objects.shape[1]), dtype=bool)
        read = np.full((len(s.questions), 9), -1, dtype=np.int64)
        for qi, (q, img) in enumerate(zip(s.questions, s.owner, strict=True)):
            ref = referents(self.train.scenes[img], q)
            pair = self.train.kinds[qi] in ("spatial", "size") and len(ref) == 2
            out[qi, 0] = np.isin(objects[img], ref[:1] if pair else ref)
            out[qi, 1] = np.isin(objects[img], ref[1:] if pair else ref)
            if pair or len(ref) == 1:
                read[qi] = ymodel.readout_target(self.train.scenes[img], ref, self.p, grid)
        self.readout_targets = torch.from_numpy(read)
        return out

    def pix(self, rows) -> torch.Tensor:
        v = self.model.vision.cfg
        return pixels(self.train.split.images[rows], v.image_mean, v.image_std)


def save_checkpoint(run: Run, state: dict) -> None:
    """Atomically write everything --resume needs."""
    path = run.args.out / "checkpoint.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            **state,
            "model": run.model.state_dict(),
            "heads": run.heads.state_dict(),
            "aux": run.aux.state_dict(),
            "np_rng": run.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    tmp.replace(path)


def vision_step(run: Run, state: dict, opt, batches: Batches) -> str:
    a = run.args
    rows = batches.next()
    for g in opt.param_groups:
        g["lr"] = lr_at(state["step"], a.vision_steps, a.vision_lr, a.warmup)
    loss, accs = run.heads.loss(run.model.vision.features(run.pix(rows)), run.labels[rows])
    params = list(run.model.vision.parameters()) + list(run.heads.parameters())
    gnorm = step_optimizer(opt, loss, params)
    return f"vision {state['step']:4d}/{a.vision_steps} loss {loss.item():.3f} gnorm {gnorm:.2f} " + _accs(accs)


def _accs(accs: list[float]) -> str:
    names = ("colour", "category", "letter", "centre", "size", "row", "col")
    return "patch acc " + " ".join(f"{n} {a:.2f}" for n, a in zip(names, accs, strict=True))


def vlm_step(run: Run, state: dict, opt, batches: Batches, out_row: torch.Tensor) -> str:
    a, m = run.args, run.model
    rows = batches.next()
    n = a.questions_per_kind
    per_image = [
        [
            q
            for qs in run.questions_of[r].values()
            for q in (run.rng.permutation(qs)[:n] if n > 1 else [qs[run.rng.integers(len(qs))]])
        ]
        for r in rows
    ]
    qs = np.concatenate(per_image)
    owner = torch.from_numpy(np.concatenate([[j] * len(q) for j, q in enumerate(per_image)]))
    suffix, target = run.enc.suffix[qs], run.enc.target[qs]  # (n_q, S)
    width = int((target >= 0).nonzero()[:, 1].max()) + 1
    suffix, target = suffix[:, :width], target[:, :width]
    for g in opt.param_groups:
        g["lr"] = lr_at(state["step"], a.steps, a.lr, a.warmup)
    feats = m.vision.features(run.pix(rows))
    img = m.vision.project(feats)  # (b, n_patches, d): the image tokens the LM receives
    pre = m.text.embed_tokens(torch.tensor(run.codec.before_image)).expand(len(rows), -1, -1)
    _, cache = m.text.prefill(torch.cat((pre, img), dim=1))
    query = run.enc.prompt_len[qs] - 1  # the last prompt token: the one FastV's ranking reads, too
    x = m.text.embed_tokens(suffix)
    hidden, probs, tapped = ymodel.extend_with_attention(m.text, x, cache, owner, a.ground_layer, query)
    loss, acc = answer_loss(m, hidden, target, out_row, torch.ones(len(qs)))
    p_loss, accs = run.heads.loss(feats, run.labels[rows])
    pp_loss, _ = run.aux.patch.loss(ymodel.unit_rms(img), run.labels[rows])
    r_loss = run.aux.readout_loss(tapped, run.readout_targets[qs])
    g_loss = ymodel.grounding_loss(probs, len(run.codec.before_image), run.targets[qs])
    total = loss + a.patch_loss * p_loss + a.proj_patch_loss * pp_loss + a.readout_loss * r_loss
    total = total + a.ground_loss * g_loss
    params = list(m.parameters()) + list(run.heads.parameters()) + list(run.aux.parameters())
    gnorm = step_optimizer(opt, total, params)
    ema = state.setdefault("ema", {"loss": loss.item(), "acc": acc, "ground": g_loss.item()})
    ema["loss"], ema["acc"] = 0.95 * ema["loss"] + 0.05 * loss.item(), 0.95 * ema["acc"] + 0.05 * acc
    ema["ground"] = 0.95 * ema.get("ground", g_loss.item()) + 0.05 * g_loss.item()
    ema["readout"] = 0.95 * ema.get("readout", r_loss.item()) + 0.05 * r_loss.item()
    return (
        f"vlm {state['step']:4d}/{a.steps} answer loss {ema['loss']:.4f} teacher-forced acc {ema['acc']:.3f} "
        f"ground loss {ema['ground']:.3f} readout loss {ema['readout']:.3f} patch loss {p_loss.item():.3f} "
        f"lm-side patch loss {pp_loss.item():.3f} gnorm {gnorm:.2f} lr {g['lr']:.2e} "
        f"q/step {len(qs)}"
    )


def evaluate_val(run: Run) -> str:
    from models.easyvqa.evaluate import greedy_answers

    run.model.eval()
    pred = greedy_answers(run.model, run.codec, run.val.split, run.val_q)
    run.model.train()
    gold = [run.val.split.answers[q] for q in run.val_q]
    kinds = [run.val.kinds[q] for q in run.val_q]
    table = by_kind(pred, gold, kinds)
    return " ".join(f"{k} {v:.3f}" for k, v in table.items())


def _stage(run: Run, state: dict):
    """(optimizer, batches, steps, step function) of the current stage, restored from state if resuming."""
    a = run.args
    train_rows = np.arange(len(run.train.split.images))
    if state["stage"] == 1:
        named = [(f"vision.{n}", p) for n, p in run.model.vision.named_parameters()]
        opt = make_optimizer(named + list(run.heads.named_parameters()), a.vision_lr, a.weight_decay)
        batches = Batches(train_rows, a.vision_batch, run.rng)
        return opt, batches, a.vision_steps, lambda: vision_step(run, state, opt, batches)
    named = list(run.model.named_parameters()) + list(run.heads.named_parameters())
    opt = make_optimizer(named + [(f"aux.{n}", p) for n, p in run.aux.named_parameters()], a.lr, a.weight_decay)
    batches = Batches(train_rows, a.images_per_step, run.rng)
    out_row = torch.full((run.model.text.cfg.vocab_size,), -1, dtype=torch.long)
    out_row[run.model.text.out_ids] = torch.arange(len(run.model.text.out_ids))
    return opt, batches, a.steps, lambda: vlm_step(run, state, opt, batches, out_row)


def load_checkpoint(run: Run) -> dict:
    path = run.args.out / "checkpoint.pt"
    if not path.is_file():
        raise SystemExit(f"{path} not found: start without --resume")
    ck = torch.load(path, weights_only=False)
    run.model.load_state_dict(ck["model"])
    run.heads.load_state_dict(ck["heads"])
    if "aux" in ck:
        run.aux.load_state_dict(ck["aux"])
    return ck


def restore(run: Run, ck: dict, opt, batches: Batches) -> None:
    """Put back the optimiser, the data order and the RNG states saved mid-stage."""
    opt.load_state_dict(ck["opt"])
    batches.order, batches.cursor = np.array(ck["batches"][0]), ck["batches"][1]
    run.rng.bit_generator.state = ck["np_rng"]
    torch.set_rng_state(ck["torch_rng"])


def run_stage(run: Run, state: dict, opt, batches: Batches, steps: int, step_fn, started: float) -> bool:
    """Train the current stage to `steps`; False if --stop-after-minutes ended it early (checkpointed)."""
    a = run.args
    last_save = time.time()

    def checkpoint():
        save_checkpoint(run, {**state, "opt": opt.state_dict(), "batches": (batches.order.tolist(), batches.cursor)})

    while state["step"] < steps:
        t, cpu = time.time(), time.process_time()
        msg = step_fn()
        state["step"] += 1
        state["seconds"][state["stage"] - 1] += time.time() - t
        state["cpu_seconds"] = state.get("cpu_seconds", 0.0) + time.process_time() - cpu
        step, secs = state["step"], state["seconds"][state["stage"] - 1]
        if step % 25 == 0 or step == steps or step <= 3:
            run.log(f"{msg} {secs / step:.2f}s/step, {state.get('cpu_seconds', 0) / 60:.1f} CPU min so far")
        if state["stage"] == 2 and (step % a.eval_every == 0 or step == steps):
            t, cpu = time.time(), time.process_time()
            run.log(f"vlm {step}: greedy accuracy on {len(run.val_q)} val questions: {evaluate_val(run)}")
            state["seconds"][1] += time.time() - t
            state["cpu_seconds"] += time.process_time() - cpu
        if time.time() - last_save > 60 * a.checkpoint_minutes or step == steps:
            checkpoint()
            last_save = time.time()
            if step == steps and state["stage"] == 1:  # later stage-2 variants can start here (see README)
                shutil.copyfile(a.out / "checkpoint.pt", a.out / "checkpoint-stage1.pt")
        if a.stop_after_minutes and time.time() - started > 60 * a.stop_after_minutes and step < steps:
            checkpoint()
            run.log(f"stopping after {a.stop_after_minutes} min at stage {state['stage']} step {step} (--resume)")
            return False
        if state["stage"] == 2 and step == a.stop_at_step and step < steps:
            checkpoint()
            run.log(f"stopping at stage 2 step {step} (--stop-at-step; --resume continues)")
            return False
    return True


def save_weights(run: Run) -> None:
    a = run.args
    weights.save(run.model, a.out / "vision.npz", a.out / "text.npz", a.seed)
    (a.out / "config.json").write_text(json.dumps(run.model.configs(), indent=2))


def finish(run: Run, state: dict) -> None:
    a = run.args
    save_weights(run)
    summary = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
        "stage_seconds": [round(s, 1) for s in state["seconds"]],
        "training_minutes": round(sum(state["seconds"]) / 60, 1),
        "training_cpu_minutes": round(state.get("cpu_seconds", 0.0) / 60, 1),
        "trained_parameters": sum(p.numel() for p in run.model.parameters()),
        "threads": a.threads,
    }
    (a.out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    run.log(f"saved weights to {a.out} after {summary['training_minutes']} min of training")


def train(args) -> None:
    started = time.time()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    run = Run(args)
    run.log(f"args: {vars(args)}")
    ck = load_checkpoint(run) if args.resume or args.save_weights else None
    if args.save_weights:
        save_weights(run)
        run.log(f"wrote the weights of stage {ck['stage']} step {ck['step']} to {args.out}")
        return
    state = {"stage": 1, "step": 0, "seconds": [0.0, 0.0]}
    if args.init_vision and not ck:
        init = torch.load(args.init_vision, weights_only=False)
        run.model.load_state_dict({k: v for k, v in init["model"].items() if k.startswith("vision.")}, strict=False)
        run.heads.load_state_dict(init["heads"])
        state["stage"] = 2
        run.log(f"pilot: ViT from {args.init_vision}, stage 1 skipped")
    if ck:
        state = {k: ck[k] for k in ("stage", "step", "seconds", "cpu_seconds", "ema") if k in ck}
        run.log(f"resumed at stage {state['stage']} step {state['step']}")
    n_params = sum(p.numel() for p in run.model.parameters())
    run.log(f"model: {n_params / 1e6:.2f}M trained params; {len(run.train.split.images)} train images")
    while state["stage"] <= 2:
        opt, batches, steps, step_fn = _stage(run, state)
        if ck and ck["stage"] == state["stage"]:
            restore(run, ck, opt, batches)
        ck = None
        if not run_stage(run, state, opt, batches, steps, step_fn, started):
            return
        state.update(stage=state["stage"] + 1, step=0)
        state.pop("ema", None)
    finish(run, state)


if __name__ == "__main__":
    train(parse_args())

"""Train the easy-vqa VLM on CPU, deterministically, and save numpy weights plus provenance.

    nice -n 19 python -m models.easyvqa.train --out out/easyvqa --log out/easyvqa-train.log

Stage 1 teaches the ViT shapes and colours with small classifier heads (a ViT trained from scratch only
through the LM stalls at ~78% accuracy: colours learnt, shapes at chance). Stage 2 trains the whole VLM,
with yes/no questions reweighted (question_weights) and a probe that asks the LM's residual stream, at
the colour/shape word of a yes/no question, whether that attribute is in the image (AuxHeads.match_loss):
without it yes/no answers stay at the question-form prior. Every question about one image shares that
image's prefix (system text + 256 image tokens), so the prefix runs through the LM once per image and
all its questions attend to the cached K/V. See README.md for the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import provenance, weights
from .data import (
    COLORS,
    SHAPES,
    EncodedQuestions,
    PromptCodec,
    Split,
    encode_questions,
    image_labels,
    load_split,
    pixels,
    token_sets,
)
from .evaluate import accuracy
from .model import VLM, TextConfig, VisionConfig
from .tokenizer import load_tokenizer

REPO_PROVENANCE = Path(__file__).with_name("provenance.json")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("out/easyvqa"))
    ap.add_argument("--log", type=Path, default=Path("out/easyvqa-train.log"))
    ap.add_argument("--provenance", type=Path, default=REPO_PROVENANCE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vision-steps", type=int, default=300)
    ap.add_argument("--vision-batch", type=int, default=32)
    ap.add_argument("--vision-lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--images-per-step", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--aux-loss", type=float, default=0.5, help="weight of the stage-1 losses during stage 2")
    ap.add_argument("--match-loss", type=float, default=1.0, help="weight of the attribute-match probe")
    ap.add_argument("--match-layer", type=int, default=1, help="LM block whose output the probe reads (0-based)")
    ap.add_argument("--negated-share", type=float, default=0.3, help="yes/no weight on negated questions")
    ap.add_argument("--val-images", type=int, default=200, help="train images held out for progress checks")
    ap.add_argument("--eval-every", type=int, default=200)
    # 1 thread: on a shared 2-core machine, 2 threads under nice spend most time waiting on each other
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--test-limit", type=int, default=0, help="evaluate only N test questions (0 = all)")
    return ap.parse_args(argv)


class Logger:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a")
        self.t0 = time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()


@dataclass
class TrainData:
    split: Split
    enc: EncodedQuestions
    questions_of: list[list[int]]  # question indices per image row
    train_rows: np.ndarray
    val_rows: np.ndarray
    labels: torch.Tensor  # (n_images, 2) shape and colour index, -1 unknown


def load_train_data(codec: PromptCodec, val_images: int, rng: np.random.Generator) -> TrainData:
    split = load_split("train")
    perm = rng.permutation(len(split.image_ids))
    questions_of = [[] for _ in split.image_ids]
    for q, r in enumerate(split.owner):
        questions_of[r].append(q)
    labels = np.stack([image_labels(split, SHAPES), image_labels(split, COLORS)], axis=1)
    return TrainData(
        split,
        encode_questions(codec, split.questions, split.answers),
        questions_of,
        perm[val_images:],
        perm[:val_images],
        torch.from_numpy(labels),
    )


class Batches:
    """Epoch-wise shuffled image rows, `n` at a time."""

    def __init__(self, rows: np.ndarray, n: int, rng: np.random.Generator):
        self.rows, self.n, self.rng = rows, n, rng
        self.order, self.cursor = rng.permutation(rows), 0

    def next(self) -> np.ndarray:
        if self.cursor + self.n > len(self.order):
            self.order, self.cursor = self.rng.permutation(self.rows), 0
        self.cursor += self.n
        return self.order[self.cursor - self.n : self.cursor]


def hflip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random horizontal flip per image: no easy-vqa answer depends on left/right."""
    flip = rng.integers(2, size=len(images)).astype(bool)
    out = images.copy()
    out[flip] = out[flip][:, :, ::-1]
    return out


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def make_optimizer(params: list[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float):
    # no decay on norms, biases and the token tables (rows of rare tokens would just shrink)
    decay = [p for n, p in params if p.dim() >= 2 and n not in ("text.embed", "text.out")]
    other = [p for n, p in params if not (p.dim() >= 2 and n not in ("text.embed", "text.out"))]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


class AuxHeads(torch.nn.Module):
    """Train-only heads (never exported): shape and colour classifiers on mean-pooled ViT features, and
    an 'is the asked-about attribute in the image' probe on the LM's residual stream at that word."""

    def __init__(self, n_embd_vision: int, n_embd_text: int):
        super().__init__()
        self.shape = torch.nn.Linear(n_embd_vision, len(SHAPES))
        self.color = torch.nn.Linear(n_embd_vision, len(COLORS))
        self.match = torch.nn.Linear(n_embd_text, 1)

    def match_loss(self, tapped: torch.Tensor, enc: EncodedQuestions, qs, pos_weight: torch.Tensor):
        """BCE of the probe at the attribute word; returns (loss, accuracy) over questions that have one."""
        present, pos = enc.attr_present[qs], enc.attr_pos[qs]
        keep = present >= 0
        if not keep.any():
            return torch.zeros(()), float("nan")
        h = tapped[keep.nonzero()[:, 0], pos[keep]]  # (n, n_embd_text)
        logit = self.match(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5))[:, 0]
        loss = F.binary_cross_entropy_with_logits(logit, present[keep], pos_weight=pos_weight)
        return loss, ((logit > 0).float() == present[keep]).float().mean().item()

    def loss(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pooled = feats.mean(1)  # (b, n_embd)
        return F.cross_entropy(self.shape(pooled), labels[:, 0], ignore_index=-1) + F.cross_entropy(
            self.color(pooled), labels[:, 1], ignore_index=-1
        )


def step_optimizer(opt, loss, params) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return float(gnorm)


def pretrain_vision(model: VLM, heads: AuxHeads, data: TrainData, args, rng, log) -> None:
    vcfg = model.vision.cfg
    named = [(f"vision.{n}", p) for n, p in model.vision.named_parameters()] + list(heads.named_parameters())
    opt = make_optimizer(named, args.vision_lr, args.weight_decay)
    batches = Batches(data.train_rows, args.vision_batch, rng)
    val_pix = pixels(data.split.images[data.val_rows], vcfg.image_mean, vcfg.image_std)
    val_labels = data.labels[data.val_rows]
    ema = None
    for step in range(args.vision_steps):
        rows = batches.next()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.vision_steps, args.vision_lr, args.warmup)
        feats = model.vision.features(pixels(hflip(data.split.images[rows], rng), vcfg.image_mean, vcfg.image_std))
        loss = heads.loss(feats, data.labels[rows])
        gnorm = step_optimizer(opt, loss, [p for _, p in named])
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        if (step + 1) % 50 == 0 or step + 1 == args.vision_steps:
            with torch.no_grad():
                pooled = model.vision.features(val_pix).mean(1)
                acc = [
                    ((h(pooled).argmax(1) == val_labels[:, i])[val_labels[:, i] >= 0]).float().mean().item()
                    for i, h in enumerate((heads.shape, heads.color))
                ]
            log(
                f"vision {step + 1:4d}/{args.vision_steps} loss {ema:.3f} gnorm {gnorm:.2f} "
                f"held-out shape acc {acc[0]:.3f} colour acc {acc[1]:.3f}"
            )


def question_weights(split: Split, negated_share: float) -> torch.Tensor:
    """(n_questions,) loss weights for yes/no questions; other questions weigh 1.

    The right answer is "attribute present XOR question negated". easy-vqa mostly asks about absent
    attributes, so "plain -> no, negated -> yes" gets 82% without the image, and 'present' alone does
    not correlate with 'yes' at all: training stalls there. Weighting yes = no within each form, with
    plain questions holding 1 - negated_share of the yes/no weight, makes 'present -> yes' a direct
    signal; the negation is learnt on top of it.
    """
    yes_no = [a in ("yes", "no") for a in split.answers]
    group = [(" not " in q or " no " in q, a) for q, a in zip(split.questions, split.answers, strict=True)]
    counts = {g: sum(1 for g2, yn in zip(group, yes_no, strict=True) if yn and g2 == g) for g in set(group)}
    share = {True: negated_share / 2, False: (1 - negated_share) / 2}
    n_yes_no = sum(yes_no)
    return torch.tensor(
        [n_yes_no * share[g[0]] / counts[g] if yn else 1.0 for g, yn in zip(group, yes_no, strict=True)]
    )


def answer_loss(model: VLM, hidden: torch.Tensor, target: torch.Tensor, out_row: torch.Tensor, weight: torch.Tensor):
    """Full-vocab cross-entropy at answer positions, computed on the kept output rows only.

    Every other row of the exported output matrix is zero, so its logit is exactly 0: the
    (vocab - n_out) of them add that many exp(0) terms to the softmax denominator.
    `weight` (n_q,) weighs each question's answer tokens.
    """
    t = model.text
    pos = target >= 0
    logits = hidden[pos] @ t.out.T  # (n_answer_tokens, n_out)
    zero = torch.full((logits.shape[0], 1), math.log(t.cfg.vocab_size - len(t.out_ids)))
    lse = torch.logsumexp(torch.cat((logits, zero), dim=1), dim=1)
    rows = out_row[target[pos]]
    w = weight[pos.nonzero()[:, 0]]  # (n_answer_tokens,)
    loss = ((lse - logits.gather(1, rows[:, None])[:, 0]) * w).sum() / w.sum()
    # teacher-forced exact match per question: each answer token is the argmax and beats the zero logits
    hit = (logits.argmax(1) == rows) & (logits.max(1).values > 0)
    misses = torch.zeros(target.shape[0]).index_add_(0, pos.nonzero()[:, 0], (~hit).float())
    return loss, (misses == 0).float().mean().item()


def by_answer_kind(pred: list[str], split: Split, q_index) -> str:
    """Accuracy per kind of question: plain and negated yes/no, shape, colour."""
    gold = [split.answers[q] for q in q_index]
    negated = [" not " in split.questions[q] or " no " in split.questions[q] for q in q_index]
    kinds = {
        "yes/no plain": lambda g, n: g in ("yes", "no") and not n,
        "yes/no negated": lambda g, n: g in ("yes", "no") and n,
        "shape": lambda g, n: g in SHAPES,
        "colour": lambda g, n: g in COLORS,
    }
    rows = zip(pred, gold, negated, strict=True)
    hits = {name: [] for name in kinds}
    for p, g, n in rows:
        for name, member in kinds.items():
            if member(g, n):
                hits[name].append(p == g)
    return ", ".join(f"{name} {np.mean(h):.3f}" for name, h in hits.items())


def train_vlm(model: VLM, heads: AuxHeads, data: TrainData, codec: PromptCodec, args, rng, log) -> dict:
    vcfg, tcfg = model.vision.cfg, model.text.cfg
    named = list(model.named_parameters()) + list(heads.named_parameters())
    opt = make_optimizer(named, args.lr, args.weight_decay)
    out_row = torch.full((tcfg.vocab_size,), -1, dtype=torch.long)
    out_row[model.text.out_ids] = torch.arange(len(model.text.out_ids))
    pre = torch.tensor(codec.before_image)
    val_q = np.array([q for r in sorted(data.val_rows) for q in data.questions_of[r]])
    batches = Batches(data.train_rows, args.images_per_step, rng)
    weights_q = question_weights(data.split, args.negated_share)
    present = data.enc.attr_present[data.enc.attr_present >= 0]
    pos_weight = (present == 0).sum() / (present == 1).sum()  # most asked-about attributes are absent
    ema_loss = ema_acc = None
    ema_match = 0.5
    t0 = time.time()
    for step in range(args.steps):
        rows = batches.next()
        qs = np.concatenate([data.questions_of[r] for r in rows])
        owner = torch.from_numpy(np.concatenate([[j] * len(data.questions_of[r]) for j, r in enumerate(rows)]))
        suffix, target = data.enc.suffix[qs], data.enc.target[qs]  # (n_q, S)
        width = int((target >= 0).nonzero()[:, 1].max()) + 1
        suffix, target = suffix[:, :width], target[:, :width]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)

        feats = model.vision.features(pixels(hflip(data.split.images[rows], rng), vcfg.image_mean, vcfg.image_std))
        _, cache = model.prefill_features(pre, feats)
        hidden, (tapped,) = model.text.extend(model.text.embed_tokens(suffix), cache, owner, taps=(args.match_layer,))
        loss, acc = answer_loss(model, hidden, target, out_row, weights_q[qs])
        m_loss, m_acc = heads.match_loss(tapped, data.enc, qs, pos_weight)
        total = loss + args.aux_loss * heads.loss(feats, data.labels[rows]) + args.match_loss * m_loss
        gnorm = step_optimizer(opt, total, [p for _, p in named])

        ema_loss = loss.item() if ema_loss is None else 0.95 * ema_loss + 0.05 * loss.item()
        ema_acc = acc if ema_acc is None else 0.95 * ema_acc + 0.05 * acc
        ema_match = ema_match if math.isnan(m_acc) else 0.95 * ema_match + 0.05 * m_acc
        if step % 25 == 0 or step + 1 == args.steps:
            el = time.time() - t0
            log(
                f"vlm {step:4d}/{args.steps} answer loss {ema_loss:.4f} acc {ema_acc:.3f} "
                f"match probe acc {ema_match:.3f} gnorm {gnorm:.2f} "
                f"lr {g['lr']:.2e} q/step {len(qs)} {el / (step + 1):.2f}s/step"
            )
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            model.eval()
            val_acc, pred = accuracy(model, codec, data.split, val_q)
            model.train()
            log(
                f"vlm {step + 1}: greedy accuracy on {len(val_q)} held-out train questions {val_acc:.4f} "
                f"({by_answer_kind(pred, data.split, val_q)})"
            )
    return {"final_answer_loss_ema": round(ema_loss, 5), "held_out_train_accuracy": val_acc}


def train(args) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)
    log = Logger(args.log)
    log(f"args: {vars(args)}")

    codec = PromptCodec(load_tokenizer())
    data = load_train_data(codec, args.val_images, rng)
    in_ids, out_ids = token_sets(codec, data.split.questions, data.split.answers)
    model = VLM(VisionConfig(), TextConfig(), in_ids, out_ids)
    heads = AuxHeads(model.vision.cfg.n_embd, model.text.cfg.n_embd)
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"model: {n_params / 1e6:.2f}M trained params, {len(in_ids)} input / {len(out_ids)} output token rows; "
        f"{len(data.train_rows)} train images, {len(data.val_rows)} held out"
    )

    t0 = time.time()
    pretrain_vision(model, heads, data, args, rng, log)
    t1 = time.time()
    results = train_vlm(model, heads, data, codec, args, rng, log)
    t2 = time.time()
    results = {
        "training_seconds": round(t2 - t0, 1),
        "stage_seconds": [round(t1 - t0, 1), round(t2 - t1, 1)],
        **results,
    }

    args.out.mkdir(parents=True, exist_ok=True)
    weights.save(model, args.out / "vision.npz", args.out / "text.npz", args.seed)
    (args.out / "config.json").write_text(json.dumps(model.configs(), indent=2))
    log(f"saved weights to {args.out} after {(t2 - t0) / 60:.1f} min of training")

    model.eval()
    test = load_split("test")
    n_test = len(test.questions) if args.test_limit <= 0 else args.test_limit
    test_acc, pred = accuracy(model, codec, test, np.arange(n_test))
    log(f"TEST greedy accuracy {test_acc:.4f} on {n_test} questions ({by_answer_kind(pred, test, range(n_test))})")
    (args.out / "test_predictions.json").write_text(json.dumps(pred))
    results |= {"test_accuracy": test_acc, "test_questions_evaluated": n_test}
    prov = provenance.record(args, model, codec, data, test, results)
    for path in (args.out / "provenance.json", args.provenance):
        path.write_text(json.dumps(prov, indent=2) + "\n")
    log(f"wrote {args.provenance}")


if __name__ == "__main__":
    train(parse_args())

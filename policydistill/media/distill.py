"""Teacher training, distillation and evaluation for the image and video domains.

The same registry as the policies: ``distill_media("image-dit", "meanflow", steps=1)`` trains
(or loads from the run folder) a flow-matching teacher, initialises a student from it
(``student_from_teacher``: identical on the diagonal, fresh target-time branch), runs the named
method through ``train.train`` and scores the student per NFE. Nothing here knows what a
method does: it sees only ``METHODS``, ``Method.sampling`` and ``Method.sampling_model``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..checkpoint import load_model, read_safetensors, save_model, write_json, write_safetensors
from ..core.flowmap import FlowMapModel, student_from_teacher
from ..core.sampler import sample
from ..core.tree import tree_slice
from ..methods import METHODS, default_method, make_method
from ..models.dit import IMAGE_PRESETS, VIDEO_PRESETS, ImageDiT, ImageDiTConfig, VideoDiT, VideoDiTConfig
from ..train.loop import TrainConfig, train
from .data import RENDER_PRESETS, load_digits, metaworld_clips, metaworld_images
from .metrics import FeatureEncoder, MediaScorer, train_encoder

MEDIA_MODELS = ("image-dit", "video-dit")
DATASETS = {"image-dit": ("digits", "metaworld"), "video-dit": ("metaworld",)}


@dataclass
class MediaSpec:
    """Everything that defines one domain's experiment (model, data, budgets)."""

    model: str = "image-dit"
    dataset: str = "digits"
    model_config: dict[str, Any] = field(default_factory=dict)
    render: str = "default"  # Meta-World render preset (data.RENDER_PRESETS)
    teacher_steps: int = 1500
    teacher_lr: float = 1e-3
    teacher_ema: float = 0.995
    distill_steps: int = 300
    distill_lr: float = 2e-4
    batch_size: int = 64
    encoder_steps: int = 400
    n_eval: int = 256
    teacher_nfe: int = 32  # the reference ODE solution
    seed: int = 0

    def key(self) -> str:
        """What the cached teacher depends on."""
        d = asdict(self)
        return json.dumps(
            {
                k: d[k]
                for k in (
                    "model",
                    "dataset",
                    "model_config",
                    "render",
                    "teacher_steps",
                    "teacher_lr",
                    "teacher_ema",
                    "batch_size",
                    "seed",
                )
            },
            sort_keys=True,
        )


def _image_cfg(preset: str, **kw: Any) -> dict[str, Any]:
    return {**asdict(IMAGE_PRESETS[preset]), **kw}


SPECS: dict[str, MediaSpec] = {
    # ~0.25M-parameter DiTs: sized so the whole benchmark runs on two shared CPU cores.
    "image-dit:digits": MediaSpec(
        "image-dit",
        "digits",
        _image_cfg("digits", patch=4, width=64, depth=3, time_dim=32),
        teacher_steps=1500,
        distill_steps=300,
        batch_size=64,
        n_eval=359,
    ),
    "image-dit:metaworld": MediaSpec(
        "image-dit",
        "metaworld",
        _image_cfg("metaworld", width=64, depth=3, time_dim=32),
        teacher_steps=1200,
        distill_steps=300,
        batch_size=48,
        n_eval=256,
    ),
    "video-dit:metaworld": MediaSpec(
        "video-dit",
        "metaworld",
        {**asdict(VIDEO_PRESETS["metaworld"]), "width": 64, "depth": 3, "time_dim": 32},
        teacher_steps=800,
        distill_steps=150,
        batch_size=24,
        encoder_steps=200,
        n_eval=192,
    ),
    # for tests and smoke runs: seconds, not minutes
    "image-dit:tiny": MediaSpec(
        "image-dit",
        "digits",
        _image_cfg("tiny", image_size=8, patch=4),
        teacher_steps=10,
        distill_steps=4,
        batch_size=16,
        encoder_steps=20,
        n_eval=32,
        teacher_nfe=4,
    ),
    "video-dit:tiny": MediaSpec(
        "video-dit",
        "metaworld",
        {**asdict(VIDEO_PRESETS["tiny"]), "num_classes": 2},
        render="tiny",
        teacher_steps=10,
        distill_steps=4,
        batch_size=8,
        encoder_steps=20,
        n_eval=8,
        teacher_nfe=4,
    ),
}


def get_spec(model: str, dataset: str | None = None, preset: str | None = None, **overrides: Any) -> MediaSpec:
    if model not in MEDIA_MODELS:
        raise ValueError(f"unknown media model {model!r}; valid: {', '.join(MEDIA_MODELS)}")
    dataset = dataset or DATASETS[model][0]
    if dataset not in DATASETS[model]:
        raise ValueError(f"{model} has no data set {dataset!r}; valid: {', '.join(DATASETS[model])}")
    key = f"{model}:{preset}" if preset else f"{model}:{dataset}"
    if key not in SPECS:
        raise ValueError(f"no media preset {key!r}; valid: {', '.join(SPECS)}")
    return replace(SPECS[key], **{k: v for k, v in overrides.items() if v is not None})


# --------------------------------------------------------------------------- data + evaluation set


@dataclass
class MediaData:
    train: Any  # a DataSource (LabelledImages or Clips)
    real: Tensor  # held-out real samples, (N, ...)
    eval_cond: Any  # conditions of the N evaluation samples (match ``real``)
    train_x: Tensor  # training samples + labels for the feature encoder
    train_y: Tensor
    num_classes: int
    class_names: list[str]


def load_media_data(spec: MediaSpec, cache_dir: str | Path | None = None, progress: bool = True) -> MediaData:
    cfg = spec.model_config
    render = RENDER_PRESETS[spec.render]
    if spec.model == "image-dit":
        if spec.dataset == "digits":
            train_set, held = load_digits(size=cfg["image_size"], seed=spec.seed)
        else:
            render = replace(render, size=cfg["image_size"], render_size=2 * cfg["image_size"])
            train_set, held = metaworld_images(render, cache_dir, progress=progress)
        n = min(spec.n_eval, len(held))
        idx = torch.linspace(0, len(held) - 1, n).round().long()
        return MediaData(
            train_set,
            held.images[idx],
            held.labels[idx],
            train_set.images,
            train_set.labels,
            len(train_set.class_names),
            train_set.class_names,
        )
    render = replace(render, size=cfg["image_size"], render_size=2 * cfg["image_size"])
    train_set, held = metaworld_clips(cfg["frames"], render, cache_dir, progress=progress)
    real, cond = held.subset(spec.n_eval)
    tx, tc = train_set.subset(4096)
    return MediaData(train_set, real, cond, tx, tc["label"], len(train_set.class_names), train_set.class_names)


def build_media_model(spec: MediaSpec, num_classes: int) -> FlowMapModel:
    cfg = {**spec.model_config, "num_classes": num_classes}
    if spec.model == "image-dit":
        return ImageDiT(ImageDiTConfig(**cfg))
    return VideoDiT(VideoDiTConfig(**cfg))


@torch.no_grad()
def generate(model: FlowMapModel, noise: Tensor, cond: Any, nfe: int, mode: str, batch: int = 128) -> Tensor:
    """Sample in chunks (bounded memory) from fixed noise and conditions."""
    model.eval()
    n = noise.shape[0]
    outs = [
        sample(model, noise[i : i + batch], tree_slice(cond, slice(i, i + batch), n), steps=nfe, mode=mode)
        for i in range(0, n, batch)
    ]
    return torch.cat(outs)


@dataclass
class MediaEvaluator:
    """Fixed evaluation noise and conditions, the teacher's reference ODE output, the scorer."""

    spec: MediaSpec
    data: MediaData
    encoder: FeatureEncoder
    noise: Tensor
    scorer: MediaScorer
    encoder_accuracy: float

    def evaluate(self, model: FlowMapModel, nfe: int, mode: str) -> tuple[dict[str, float], Tensor]:
        t0 = time.perf_counter()
        x = generate(model, self.noise, self.data.eval_cond, nfe, mode)
        wall = time.perf_counter() - t0
        return {"nfe": nfe, **self.scorer.score(x), "sample_ms": 1000 * wall / len(x)}, x


def _load_or_train_encoder(
    spec: MediaSpec, data: MediaData, run_dir: Path, progress: bool
) -> tuple[FeatureEncoder, float]:
    folder = run_dir / "encoder"
    shape = tuple(data.train_x.shape[1:])
    meta = {"key": spec.key(), "encoder_steps": spec.encoder_steps, "shape": list(shape)}
    if (folder / "meta.json").exists() and json.loads((folder / "meta.json").read_text()).get("meta") == meta:
        enc = FeatureEncoder(shape, data.num_classes)
        enc.load_state_dict(read_safetensors(folder / "encoder.safetensors"))
        return enc.eval().requires_grad_(False), json.loads((folder / "meta.json").read_text())["heldout_accuracy"]
    held_y = data.eval_cond["label"] if isinstance(data.eval_cond, dict) else data.eval_cond
    enc, report = train_encoder(
        data.train_x,
        data.train_y,
        data.num_classes,
        steps=spec.encoder_steps,
        seed=spec.seed,
        heldout=(data.real, held_y),
    )
    write_safetensors(folder / "encoder.safetensors", enc.state_dict())
    write_json(folder / "meta.json", {"meta": meta, **asdict(report)})
    return enc, report.heldout_accuracy


def train_teacher(
    spec: MediaSpec, data: MediaData, run_dir: str | Path, retrain: bool = False, progress: bool = True
) -> FlowMapModel:
    """Flow-matching teacher, cached in ``run_dir/teacher`` (keyed by everything it depends on)."""
    folder = Path(run_dir) / "teacher"
    if not retrain and (folder / "config.json").exists():
        cfg = json.loads((folder / "config.json").read_text())
        if cfg.get("policydistill", {}).get("media_key") == spec.key():
            return load_model(folder).eval()
    model = build_media_model(spec, data.num_classes)
    tcfg = TrainConfig(
        steps=spec.teacher_steps,
        batch_size=spec.batch_size,
        lr=spec.teacher_lr,
        warmup_steps=min(100, spec.teacher_steps // 10),
        ema_decay=spec.teacher_ema,
        seed=spec.seed,
        progress=progress,
        description=f"teacher {spec.model}:{spec.dataset}",
    )
    result = train(model, make_method("flow_matching"), data.train, tcfg)
    teacher = result.ema if result.ema is not None else result.model
    save_model(
        folder,
        teacher,
        extra={"media_key": spec.key(), "train_wall_s": result.wall_time_s, "final_loss": result.history[-1]["loss"]},
    )
    return teacher.eval()


def prepare_domain(
    spec: MediaSpec,
    run_dir: str | Path,
    cache_dir: str | Path | None = None,
    retrain_teacher: bool = False,
    progress: bool = True,
) -> tuple[FlowMapModel, MediaEvaluator]:
    """Data, cached teacher, cached feature encoder, fixed evaluation noise and the teacher's
    reference samples from that noise."""
    torch.manual_seed(spec.seed)
    run_dir = Path(run_dir)
    data = load_media_data(spec, cache_dir, progress=progress)
    teacher = train_teacher(spec, data, run_dir, retrain=retrain_teacher, progress=progress)
    encoder, acc = _load_or_train_encoder(spec, data, run_dir, progress)
    noise = torch.randn(
        (len(data.real), *teacher.sample_shape()), generator=torch.Generator().manual_seed(spec.seed + 1)
    )
    reference = generate(teacher, noise, data.eval_cond, spec.teacher_nfe, "diagonal")
    scorer = MediaScorer(encoder, data.real, reference, seed=spec.seed)
    return teacher, MediaEvaluator(spec, data, encoder, noise, scorer, acc)


# --------------------------------------------------------------------------- distillation


@dataclass
class MediaDistillResult:
    method: str
    model: FlowMapModel  # the network to sample with (method.sampling_model)
    sampling: str
    metrics: list[dict[str, float]]
    train_wall_s: float
    folder: Path | None
    samples: dict[int, Tensor] = field(default_factory=dict)


def distill_with(
    teacher: FlowMapModel,
    evaluator: MediaEvaluator,
    method: str,
    nfes: tuple[int, ...] = (1, 2),
    train_steps: int | None = None,
    lr: float | None = None,
    method_options: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> MediaDistillResult:
    """Distil ``teacher`` with a registered method and score the student at each NFE."""
    spec = evaluator.spec
    if method not in METHODS:
        METHODS.load(method)  # raises with the list of valid names
    m = make_method(method, **(method_options or {}))
    student = student_from_teacher(teacher)
    tcfg = TrainConfig(
        steps=train_steps or spec.distill_steps,
        batch_size=spec.batch_size,
        lr=lr or spec.distill_lr,
        warmup_steps=min(20, (train_steps or spec.distill_steps) // 5),
        seed=spec.seed + 7,
        progress=progress,
        description=f"{method} {spec.model}:{spec.dataset}",
    )
    result = train(student, m, evaluator.data.train, tcfg, teacher=teacher)
    net = m.sampling_model(result.model)
    metrics, samples = [], {}
    for nfe in nfes:
        row, x = evaluator.evaluate(net, nfe, m.sampling)
        metrics.append(row)
        samples[nfe] = x
    folder = None
    if out_dir is not None:
        folder = save_model(
            Path(out_dir),
            net,
            extra={"method": method, "sampling": m.sampling, "media_key": spec.key(), "metrics": metrics},
        )
    return MediaDistillResult(method, net, m.sampling, metrics, result.wall_time_s, folder, samples)


def distill_media(
    model_name: str,
    method: str | None = None,
    steps: int = 1,
    dataset: str | None = None,
    train_steps: int | None = None,
    run_dir: str | Path = "runs/media",
    preset: str | None = None,
    method_options: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> MediaDistillResult:
    """``policydistill distill image-dit|video-dit``: distil the domain's teacher with ``method``
    into a ``steps``-NFE sampler (``method`` None: the domain's default, ``methods.default_method``).
    Returns the student and its metrics at ``steps`` NFE (and at 1 NFE when ``steps`` > 1); the
    student is saved in ``run_dir/<domain>/<method>-<steps>nfe``."""
    if steps < 1:
        raise ValueError(f"--steps must be >= 1 NFE, got {steps}")
    spec = get_spec(model_name, dataset, preset)
    method = method or default_method("video" if spec.model == "video-dit" else "images")
    domain_dir = Path(run_dir) / f"{spec.model}-{preset or spec.dataset}"
    teacher, evaluator = prepare_domain(spec, domain_dir, cache_dir, progress=progress)
    nfes = tuple(sorted({1, steps}))
    return distill_with(
        teacher,
        evaluator,
        method,
        nfes,
        train_steps,
        method_options=method_options,
        out_dir=domain_dir / f"{method}-{steps}nfe",
        progress=progress,
    )

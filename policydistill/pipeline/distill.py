"""Distil a teacher policy into an N-step student and prove it on the same seeds.

    policydistill distill pi0 --steps 1 [--method reflow] [--checkpoint DIR] [--task ...]

1. load the teacher (bundled default, a policydistill checkpoint or a lerobot folder);
2. initialise the student from it (target-time branch at zero: student == teacher at step 0);
3. run the method through the one training loop on the teacher's demonstrations;
4. evaluate three variants on identical seeds — the teacher at ``teacher_nfe`` (10) Euler steps,
   the teacher naively at N steps, the student at N steps — for closed-loop success per task,
   steps to success, offline action MSE, the chunk-distribution distance to the 10-step
   teacher at held-out observations, and latency;
5. write ``report.json``, ``report.png`` and the student checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoint import save_model, write_json
from ..core.flowmap import student_from_teacher
from ..methods import DEFAULT_METHOD
from . import cli_help

if TYPE_CHECKING:
    from rich.console import Console

logger = logging.getLogger(__name__)


@dataclass
class DistillConfig:
    """A distillation run. A field with ``metadata`` is a ``policydistill distill``/``compare`` option
    (help text, flags, bounds: see ``policydistill.cli.config_options``)."""

    model: str = "pi0"
    checkpoint: str | None = field(
        default=None,
        metadata={  # None = the bundled teacher
            "help": "Teacher: policydistill checkpoint or lerobot policy folder."
        },
    )
    tokenizer: str | None = field(
        default=None,
        metadata={  # local tokenizer for lerobot checkpoints
            "help": "Local tokenizer folder for lerobot checkpoints."
        },
    )
    method: str = field(
        default=DEFAULT_METHOD,
        metadata={  # earned by `compare` on the bundled teacher
            "flags": ("--method", "-m"),
            "help": "Any registered method (policydistill methods; "
            f"default: {DEFAULT_METHOD} for policies, the domain's for media).",
        },
    )
    steps: int = field(
        default=1, metadata={"flags": ("--steps",), "default": 1, "min": 1, "help": "NFE of the student."}
    )
    iters: int = field(default=1500, metadata={"min": 1, "help": "Distillation optimiser steps."})
    batch_size: int = 32
    lr: float = 1e-4
    train: str | None = field(
        default=None,
        metadata={  # None = the model's default (FlowMapModel.default_train)
            "help": "What trains: 'expert' (policies' default: the vision-language prefix stays frozen, held "
            "once and encoded once per batch) or 'all' (every weight).",
        },
    )
    frozen_dtype: str | None = field(
        default=None,
        metadata={  # None = the model's own dtype
            "flags": ("--frozen-dtype",),
            "help": "Store the frozen prefix in this dtype (bf16 halves its memory; compute stays as configured).",
        },
    )
    lora_rank: int = field(
        default=0,
        metadata={
            "flags": ("--lora-rank",),
            "min": 0,
            "help": "Train LoRA adapters of this rank on the action expert instead of its weights (peft; 0 = off).",
        },
    )
    rtc_max_delay: int | None = field(
        default=None,
        metadata={  # None = the teacher's own rtc_training_max_delay
            "flags": ("--rtc-max-delay",),
            "min": 0,
            "help": "Training-time real-time chunking: distil with clean prefixes of 0..N committed actions "
            "(needs a teacher trained with it; default: the teacher's setting, 0 = off).",
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "Training arithmetic: auto (bf16 autocast on CUDA, float32 on CPU), fp32 or bf16.",
        },
    )
    warmup_steps: int = 100
    task: str | None = field(default=None, metadata={"help": "Tasks to evaluate (default: the teacher's)."})
    # default: the teacher's dataset (regenerated if missing); given: must exist
    data: str | None = field(default=None, metadata={"help": "Demonstrations (default: the teacher's)."})
    episodes: int = field(default=50, metadata={"min": 1, "help": "Evaluation episodes per task and variant."})
    teacher_nfe: int = 10
    n_action_steps: int | None = field(
        default=None,
        metadata={  # default: the policy's
            "min": 1,
            "help": "Actions executed per chunk in closed loop.",
        },
    )
    # Extra closed-loop runs at other execution horizons (None: 8, midpoint, chunk length; (): off)
    sweep_n_action_steps: tuple[int, ...] | None = field(
        default=None,
        metadata={
            "flags": ("--sweep",),
            "type": str,
            "help": "n_action_steps values to also evaluate, e.g. 8,12,16 "
            "(default: 8, midpoint, chunk length; 'none' = off).",
        },
    )
    sweep_episodes: int = field(default=20, metadata={"min": 1, "help": "Episodes per task at each extra sweep value."})
    workers: int = field(default=2, metadata={"min": 0, "help": "Simulator worker processes (0 = in this process)."})
    # None = the teacher's recorded eval limit, else the task's own
    max_episode_steps: int | None = field(
        default=None, metadata={"min": 1, "help": "Episode step limit (default: the task's)."}
    )
    heldout_obs: int = 32  # held-out observations for MSE and chunk distance
    chunk_samples: int = 16  # sampled chunks per observation for the distance
    latency_repeats: int = 50
    seed: int = field(default=0, metadata={"help": None})
    threads: int = field(default=0, metadata=cli_help.THREADS)
    out: str = field(
        default="runs/distill", metadata={"help": "Output folder (default runs/distill-<model>-<method>-<steps>)."}
    )
    video: bool = field(
        default=False, metadata={"flags": ("--video",), "default": False, "help": "Save rollout videos."}
    )
    realtime: str | None = field(default=None, metadata=cli_help.REALTIME)  # latency in the loop (eval.realtime)
    execution: str = field(default="sync", metadata=cli_help.EXECUTION)
    progress: bool = True
    micro_batches: int = field(
        default=0,
        metadata={  # 0 = one per torchrun rank
            "flags": ("--micro-batches",),
            "min": 0,
            "help": "Seeded micro-batches per step (0 = one per torchrun rank).",
        },
    )
    fsdp: bool = field(default=False, metadata=cli_help.FSDP)  # shard the student over the torchrun ranks (FSDP2)
    method_options: dict[str, Any] = field(default_factory=dict)
    log: str = field(default="", metadata=cli_help.LOG)  # extra run logs besides metrics.jsonl: tensorboard, wandb
    ignore_memory_plan: bool = field(
        default=False,
        metadata={
            "flags": ("--ignore-memory-plan",),
            "default": False,
            "help": "Run even when the memory plan says it does not fit (the plan is an estimate).",
        },
    )


DISTILL_PRESETS: dict[str, DistillConfig] = {
    "default": DistillConfig(),
    "tiny": DistillConfig(
        iters=10,
        batch_size=8,
        warmup_steps=2,
        episodes=2,
        heldout_obs=4,
        chunk_samples=4,
        latency_repeats=3,
        workers=0,
        max_episode_steps=40,
        sweep_n_action_steps=(4, 8),
        sweep_episodes=1,
    ),
}


@dataclass
class Variant:
    name: str  # "teacher" | "naive" | "student"
    policy: Any
    nfe: int
    mode: str
    method: str | None = None
    train_seconds: float | None = None

    @property
    def label(self) -> str:
        """Unique within a report: "teacher@10", "naive@1", "snapflow@1"."""
        return f"{self.method or self.name}@{self.nfe}"


def train_mode(cfg: DistillConfig, teacher: Any) -> str:
    """The ``--train`` mode of a run: the option, else the model's default ("all" under --fsdp, which
    shards every model separately and so cannot share a frozen prefix)."""
    if cfg.train is None and cfg.fsdp:
        return "all"
    return cfg.train or getattr(teacher, "default_train", "all")


#: --frozen-dtype names
FROZEN_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def make_student(
    teacher: Any, method_sampling: str, nfe: int, train: str = "all", frozen_dtype: str | None = None
) -> Any:
    """The student: a copy of ``teacher`` that shares the modules frozen under ``train`` (stored in
    ``frozen_dtype`` when given: the teacher's too, since it is the same copy)."""
    student = student_from_teacher(teacher, train, FROZEN_DTYPES[frozen_dtype] if frozen_dtype else None)
    student.config.sampling_mode = method_sampling
    student.config.num_inference_steps = nfe
    return student


def set_rtc_max_delay(student: Any, teacher: Any, max_delay: int | None) -> int:
    """The student's training-time RTC range: ``max_delay`` (None: the teacher's). A prefix the
    teacher was not trained with would make its targets meaningless, so that is refused."""
    have = int(getattr(teacher.config, "rtc_training_max_delay", 0) or 0)
    if max_delay is None:
        return have
    if max_delay > have:
        raise ValueError(
            f"--rtc-max-delay {max_delay}: the teacher was trained with training-time RTC up to {have} committed "
            "actions, and its velocity is what the student learns; train the teacher with "
            f"`policydistill train ... --rtc-max-delay {max_delay}` (or pass a value <= {have})"
        )
    student.config.rtc_training_max_delay = int(max_delay)
    return int(max_delay)


@dataclass
class Job:
    """What every distillation of one teacher shares."""

    teacher: Any
    teacher_dir: Path
    tasks: list[str]
    data_path: Path
    train_set: Any
    val_set: Any
    episode_limit: int | None = None  # the limit the teacher was judged with (its recipe's eval_max_steps)

    def settle(self, cfg: DistillConfig) -> DistillConfig:
        """``cfg`` with what it left open filled in from the teacher's record."""
        if cfg.max_episode_steps is None and self.episode_limit:
            logger.info(
                f"episodes are limited to {self.episode_limit} steps, as in the teacher's evaluation "
                "(--max-episode-steps to change)"
            )
            return dataclasses.replace(cfg, max_episode_steps=self.episode_limit)
        return cfg


def load_job(cfg: DistillConfig) -> Job:
    """Load the teacher and its demonstrations (regenerated with the teacher's seeds if missing)."""
    from ..train import distributed
    from ..train.loop import check_output_dir
    from .demos import ensure_demos
    from .run_options import apply_threads, check_chunk_options, check_distill_options
    from .teacher import open_windows, tasks_of
    from .teacher_io import BUNDLED_TEACHER, load_teacher, provenance, resolve_data

    check_distill_options(cfg)  # every option that needs no teacher, before any work
    apply_threads(cfg.threads)
    out = Path(cfg.out)
    check_output_dir(out)  # an unwritable --out fails before any loading or training
    if cfg.checkpoint is None:
        logger.info(f"no --checkpoint given: using the bundled {cfg.model} teacher ({BUNDLED_TEACHER})")
    # load_teacher refuses non-finite weights and buffers and an invalid config, so a damaged teacher
    # fails here, before any demonstrations are generated (train() checks the models it is handed again)
    teacher, teacher_dir = load_teacher(cfg.checkpoint, cfg.tokenizer)
    teacher.eval()
    family = {"pi05": "pi0"}  # pi0.5 is a variant of pi0: `distill pi0` takes either checkpoint
    arch = getattr(teacher, "architecture", cfg.model)
    if cfg.model and family.get(arch, arch) != family.get(cfg.model, cfg.model):
        raise ValueError(
            f"the checkpoint is a {teacher.architecture} policy, not {cfg.model}: "
            f"run `policydistill distill {teacher.architecture} ...`"
        )
    prov = provenance(teacher_dir)
    tasks = tasks_of(cfg.task) if cfg.task else list(prov.get("tasks", []))
    if not tasks:
        raise ValueError("the teacher does not record its tasks: pass --task (e.g. metaworld/push-v3)")
    if cfg.task:
        check_action_dim(teacher, tasks, prov.get("tasks", []))
    check_chunk_options(cfg, int(teacher.config.chunk_size))
    data_path = resolve_data(cfg.data) if cfg.data else Path(prov.get("dataset") or out / "demos.zarr")
    with distributed.main_first():  # rank 0 generates missing demos first; the others then find them on disk
        if cfg.data is None and not data_path.exists():  # only the teacher's recorded demos are ever regenerated
            tc = prov.get("teacher_config", {})
            logger.info(f"demonstrations {data_path} not found: generating them (same tasks and seeds as the teacher)")
            data_path = out / "demos.zarr"
            ensure_demos(
                tasks,
                data_path,
                tc.get("episodes_per_task", 50),
                teacher.config.image_size,
                tc.get("multimodal", True),
                tc.get("action_noise", 0.1),
                tc.get("seed", 0),
            )
    val_fraction = prov.get("teacher_config", {}).get("val_fraction", 0.1)
    split_seed = prov.get("seed", cfg.seed)
    chunk = teacher.config.chunk_size
    return Job(
        teacher,
        teacher_dir,
        tasks,
        data_path,
        open_windows(data_path, chunk, "train", val_fraction, split_seed),
        open_windows(data_path, chunk, "val", val_fraction, split_seed),
        recorded_episode_limit(teacher_dir, prov),
    )


def recorded_episode_limit(teacher_dir: Path, prov: dict[str, Any]) -> int | None:
    """The episode limit the teacher was judged with: its recipe's ``eval_max_steps``, else the
    ``max_episode_steps`` of the evaluation shipped next to it (``eval.json``)."""
    limit = prov.get("teacher_config", {}).get("eval_max_steps")
    path = Path(teacher_dir) / "eval.json"
    if limit is None and path.is_file():
        try:
            limit = json.loads(path.read_text()).get("config", {}).get("max_episode_steps")
        except (OSError, ValueError, AttributeError):
            limit = None  # an unreadable record is no reason to stop: the task's own limit applies
    return int(limit) if limit else None


def check_action_dim(policy: Any, tasks: list[str], teacher_tasks: list[str]) -> None:
    """The policy's action size must be what the environments take (one env per family is built)."""
    from ..envs import make

    want = int(policy.config.action_dim)
    for family in dict.fromkeys(t.split("/")[0] for t in tasks):
        task = next(t for t in tasks if t.startswith(family + "/"))
        env = make(task, image_size=32)
        try:
            got = int(env.action_space.shape[0])
        finally:
            env.close()
        if got != want:
            raise ValueError(
                f"the teacher outputs {want}-dimensional actions but {task} takes {got}-dimensional actions: "
                f"evaluate it on the kind of task it was trained on ({', '.join(teacher_tasks) or 'see its config.json'}) "
                "or distil a teacher trained for this robot."
            )


def train_student(
    job: Job, cfg: DistillConfig, method_name: str, nfe: int, out: Path, resume: bool = False, extend: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Distil ``job.teacher`` with ``method_name`` for ``nfe`` steps; saves ``out/student``.
    ``resume`` continues ``out/train`` only under the same teacher, NFE, iterations, seed, method,
    method options and data (``extend`` allows more iterations)."""
    from ..methods import make_method
    from ..train import TrainConfig, distributed, train
    from .policy_data import PolicyDataSource

    method = make_method(method_name, **cfg.method_options)
    torch.manual_seed(cfg.seed)  # the new target-time layers are random: draw them from the run's seed
    train_as = train_mode(cfg, job.teacher)
    student = make_student(job.teacher, method.sampling, nfe, train_as, cfg.frozen_dtype)
    rtc = set_rtc_max_delay(student, job.teacher, cfg.rtc_max_delay)
    if cfg.lora_rank:
        from ..train.lora import add_lora

        n = add_lora(student, cfg.lora_rank)
        logger.info(f"LoRA rank {cfg.lora_rank} on the action expert: {n / 1e6:.2f} M adapter parameters")
    command = " ".join(shlex.quote(a) for a in sys.argv)
    prov = {
        "role": "student",
        "method": method_name,
        "nfe": nfe,
        "teacher": str(job.teacher_dir),
        "command": command,
        "seed": cfg.seed,
        "dataset": str(job.data_path),
        "tasks": job.tasks,
        "distill_config": dataclasses.asdict(cfg),
    }
    tcfg = TrainConfig(
        steps=cfg.iters,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        seed=cfg.seed,
        progress=cfg.progress,
        checkpoint_every=max(0, cfg.iters // 5),
        micro_batches=cfg.micro_batches,
        fsdp=cfg.fsdp,
        log=cfg.log,
        precision=cfg.precision,
        description=f"distil {method_name} → {nfe} NFE",
    )
    identity = {
        "teacher": str(Path(job.teacher_dir).resolve()),
        "nfe": nfe,
        "method_name": method_name,
        "method_options": cfg.method_options,
        "data": str(Path(job.data_path).resolve()),
    }
    if train_as != "all":  # runs written before training modes existed trained everything
        identity["train"] = train_as
    if cfg.frozen_dtype:
        identity["frozen_dtype"] = cfg.frozen_dtype
    if cfg.lora_rank:
        identity["lora_rank"] = cfg.lora_rank
    if rtc:
        identity["rtc_max_delay"] = rtc
    t0 = time.perf_counter()
    result = train(
        student,
        method,
        PolicyDataSource(job.train_set, student),
        tcfg,
        teacher=job.teacher,
        out_dir=out / "train",
        resume=resume,
        checkpoint_extra=prov,
        identity=identity,
        extend=extend,
    )
    prov["train_seconds"] = time.perf_counter() - t0
    prov["train"] = train_as
    prov["final_loss"] = sum(h["loss"] for h in result.history[-20:]) / max(1, len(result.history[-20:]))
    student = method.sampling_model(result.model)
    if cfg.lora_rank:  # the saved student is a plain model: adapters folded into the expert's weights
        from ..train.lora import merge_lora

        merge_lora(student)
    student.eval()
    if not distributed.is_main():  # under torchrun, rank 0 saves and evaluates
        return student, prov
    save_model(out / "student", student, extra=prov)
    logger.info(f"saved the student to {out / 'student'} ({prov['train_seconds']:.0f} s of distillation)")
    return student, prov


def distill_policy(
    cfg: DistillConfig, resume: bool = False, extend: bool = False, console: Console | None = None
) -> dict[str, Any]:
    """Run the whole job; returns the report (also written to ``<out>/report.json``). ``<out>`` is
    locked for the run (one run per folder). The report's tables go to ``console`` when one is
    given (messages go to ``logging``)."""
    from ..train import distributed
    from .run_options import check_distill_options, run_folder

    check_distill_options(cfg)  # a bad option fails before anything is created or loaded
    distributed.init_from_env()  # no-op unless launched by torchrun
    with run_folder(Path(cfg.out)):
        return _distill_policy(cfg, resume, extend, console)


def _distill_policy(cfg: DistillConfig, resume: bool, extend: bool, console: Console | None) -> dict[str, Any]:
    from ..train import distributed
    from .evaluate import evaluate_variants, print_report

    out = Path(cfg.out)
    if cfg.fsdp:  # before the teacher and the data are loaded
        from ..methods import make_method
        from ..train.fsdp import check_ready

        check_ready(make_method(cfg.method, **cfg.method_options))
    from .plan import check_run_memory, memory_record

    plan = check_run_memory(cfg)  # printed, and a run that cannot fit refused, before the teacher is loaded
    job = load_job(cfg)
    cfg = job.settle(cfg)
    plan = plan or check_run_memory(cfg, job.teacher)  # a lerobot folder's sizes are known once it is loaded
    student, prov = train_student(job, cfg, cfg.method, cfg.steps, out, resume, extend)
    memory = memory_record(plan) if plan is not None else None  # the peak of loading + training, beside the plan
    if not distributed.is_main():
        return {}
    sampling = student.sampling_mode  # stored by train(): the mode the method was trained for
    variants = [
        Variant("teacher", job.teacher, cfg.teacher_nfe, "diagonal"),
        Variant("naive", job.teacher, cfg.steps, "diagonal"),
        Variant("student", student, cfg.steps, sampling, cfg.method, prov["train_seconds"]),
    ]
    report = evaluate_variants(variants, job.tasks, job.val_set, cfg, out)
    report.update(
        {
            "method": cfg.method,
            "steps": cfg.steps,
            "teacher": str(job.teacher_dir),
            "student": str(out / "student"),
            "tasks": job.tasks,
            "train_seconds": prov["train_seconds"],
            "final_loss": prov["final_loss"],
            "train": prov["train"],
            "memory": memory,
            "command": prov["command"],
        }
    )
    from .teacher_io import export_lerobot_student

    report["lerobot_export"] = export_lerobot_student(student, job.teacher_dir, out, report)
    write_json(out / "report.json", report)
    if console is not None:
        print_report(report, console)
    if report["lerobot_export"]["written"]:
        logger.info(f"wrote the lerobot folder of the student to {report['lerobot_export']['path']}")
    logger.info(f"wrote {out / 'report.json'} and {out / 'report.png'}")
    return report

"""Today's lerobot (0.6.x) in and out: parity with fixtures made by the current lerobot release
(tests/fixtures/lerobot_current, see its README), and every way a current checkpoint could be read
or written wrong: the pi0.5 state prompt, relative actions, memory fields, tokenizer artifacts,
QUANTILE10 / equal-quantile normalisation, Hub ids in the local cache, and the 1-step export fold."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from policydistill.checkpoint import CheckpointError, load_model, save_model
from policydistill.core.flowmap import student_from_teacher
from policydistill.core.normalize import Normalizer
from policydistill.data import LeRobotV3Dataset
from policydistill.pipeline.teacher_io import load_teacher, resolve_data
from policydistill.policies.hub import HubNotCached, resolve
from policydistill.policies.lerobot_io import read_lerobot_folder
from policydistill.policies.pi0.model import Pi0Policy
from policydistill.policies.pi0.processor import pi05_prompts
from policydistill.policies.smolvla.model import SmolVLA

HERE = Path(__file__).resolve().parent / "fixtures" / "lerobot_current"
TASKS = ["pick the cube", "push_block to the goal\n"]
TOL = 1e-5
PALIGEMMA = "google/paligemma-3b-pt-224"


def cached_repo(cache: Path, repo_id: str, src: Path, repo_type: str = "model", ref: str = "main") -> Path:
    """Lay ``src`` out as huggingface_hub does: <type>s--org--name/{refs/<ref>, snapshots/<sha>/...}."""
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(src, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / ref).write_text(snap.name)
    return snap


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face home in a temporary folder, holding PaliGemma's id with the fixtures' tokenizer."""
    home = tmp_path / "hf"
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_LEROBOT_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cached_repo(home / "hub", PALIGEMMA, HERE / "pi0" / "tokenizer")
    return home


def observation(ref: dict) -> dict:
    return {
        "observation.images.base": ref["in.image.base"],
        "observation.images.wrist": ref["in.image.wrist"],
        "observation.state": ref["in.state"],
        "task": list(TASKS),
    }


def load(name: str, folder: Path | None = None, **kw):
    folder = folder or HERE / name
    if name == "smolvla":
        return SmolVLA.from_lerobot(folder, **kw).eval()
    return Pi0Policy.from_lerobot(folder, **kw).eval()


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("name", ["pi0", "pi05", "smolvla"])
def test_end_to_end_parity_with_current_lerobot(name: str, hf_home: Path) -> None:
    """Raw observation → actions, as lerobot's preprocessor + predict_action_chunk + postprocessor."""
    ref = load_file(str(HERE / name / "reference.safetensors"))
    policy = load(name)  # pi0/pi0.5: the tokenizer id in the processor JSON resolves through the cache
    cond = policy.process(observation(ref))
    assert torch.equal(cond["tokens"], ref["mid.tokens"])
    assert torch.equal(cond["token_masks"], ref["mid.token_masks"])
    assert float((cond["state"][:, :4] - ref["mid.state_normalized"]).abs().max()) <= TOL
    actions = policy.sample_actions(observation(ref), steps=10, noise=ref["in.noise"], mode="diagonal")
    assert float((actions - ref["out.actions"]).abs().max()) <= TOL


def test_pi05_prompt_is_the_unpadded_state_as_lerobot_writes_it(hf_home: Path) -> None:
    ref = load_file(str(HERE / "pi05" / "reference.safetensors"))
    meta = json.loads((HERE / "pi05" / "reference.json").read_text())
    policy = load("pi05")
    assert policy.config.state_prompt == "raw"
    assert pi05_prompts(TASKS, ref["mid.state_normalized"]) == meta["pi05_prompts"]
    # sample 0's equal-quantile state dim maps to −1 → bin 0, not 128 (the midpoint)
    assert meta["pi05_prompts"][0].split("State: ")[1].split(";")[0].split()[-1] == "0"
    padded = load("pi05", overrides={"state_prompt": "padded"})
    assert not torch.equal(padded.process(observation(ref))["tokens"], ref["mid.tokens"])


def test_state_prompt_detection_recording_and_old_checkpoints(tmp_path: Path, hf_home: Path) -> None:
    folder = tmp_path / "pi05"
    shutil.copytree(HERE / "pi05", folder)
    meta = json.loads((folder / "reference.json").read_text())  # keep the sizes, drop the recorded version
    (folder / "reference.json").write_text(
        json.dumps({k: meta[k] for k in ["architecture_overrides_NOT_in_config_json"]})
    )
    cfg = json.loads((folder / "config.json").read_text())
    assert "use_relative_actions" in cfg  # lerobot >= 0.5.1 wrote it: no doubt, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load("pi05", folder).config.state_prompt == "raw"
    # a folder that does not tell (0.4.4 and 0.5.0 write the same fields): current behaviour + a warning
    for key in (
        "use_relative_actions",
        "relative_exclude_joints",
        "action_feature_names",
        "pretrained_revision",
        "use_visual_memory",
        "use_proprioceptive_memory",
    ):
        cfg.pop(key, None)
    (folder / "config.json").write_text(json.dumps(cfg))
    pre = json.loads((folder / "policy_preprocessor.json").read_text())
    pre["steps"] = [s for s in pre["steps"] if s["registry_name"] != "relative_actions_processor"]
    (folder / "policy_preprocessor.json").write_text(json.dumps(pre))
    post = json.loads((folder / "policy_postprocessor.json").read_text())
    post["steps"] = [s for s in post["steps"] if s["registry_name"] != "absolute_actions_processor"]
    (folder / "policy_postprocessor.json").write_text(json.dumps(post))
    with pytest.warns(UserWarning, match="state_prompt"):
        assert load("pi05", folder).config.state_prompt == "raw"
    (folder / "train_config.json").write_text(json.dumps({"seed": 1}))  # lerobot 0.4.x: no cudnn_deterministic
    policy = load("pi05", folder)
    assert policy.config.state_prompt == "padded"
    save_model(tmp_path / "ours", policy)  # the student records the choice ...
    assert load_model(tmp_path / "ours").config.state_prompt == "padded"
    own = json.loads((tmp_path / "ours" / "config.json").read_text())
    own.pop("state_prompt")  # ... and a checkpoint written before the field existed was trained padded
    (tmp_path / "ours" / "config.json").write_text(json.dumps(own))
    assert load_model(tmp_path / "ours").config.state_prompt == "padded"


def test_relative_actions_are_applied_exactly(hf_home: Path) -> None:
    ref = load_file(str(HERE / "pi0" / "reference.safetensors"))
    policy = load("pi0")
    assert policy.config.relative_action_mask == [True, True, False]  # "gripper" stays absolute
    obs = observation(ref)
    rel = policy.sample_actions(obs, steps=10, noise=ref["in.noise"], mode="diagonal")
    policy.config.relative_action_mask = None
    absolute = policy.sample_actions(obs, steps=10, noise=ref["in.noise"], mode="diagonal")
    state = ref["in.state"][:, None, :3] * torch.tensor([1.0, 1.0, 0.0])
    assert torch.allclose(rel - absolute, state.expand_as(rel), atol=1e-6)
    # training targets are the same offsets, subtracted before normalising
    policy.config.relative_action_mask = [True, True, False]
    target = rel[:, :8]
    batch = policy.make_flow_batch({**obs, "action": target})
    unnorm = policy.normalizer.unnormalize("action", batch.data[..., :3].float())
    assert torch.allclose(unnorm, absolute[:, :8], atol=1e-5)


@pytest.mark.parametrize("field", ["use_visual_memory", "use_proprioceptive_memory"])
def test_pi05_memory_is_refused_naming_the_field(field: str, tmp_path: Path, hf_home: Path) -> None:
    folder = tmp_path / "pi05"
    shutil.copytree(HERE / "pi05", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg[field] = True
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=field):
        load("pi05", folder)


def _name_tokenizer_artifact(folder: Path) -> None:
    """Rewrite the preprocessor as lerobot >= 0.6.2 saves it: the tokenizer is the artifact ``tokenizer``
    inside the checkpoint."""
    pre = json.loads((folder / "policy_preprocessor.json").read_text())
    for step in pre["steps"]:
        if step["registry_name"] == "tokenizer_processor":
            step["config"]["tokenizer_name"] = "tokenizer"
            step["artifacts"] = {"tokenizer_name": "tokenizer"}
    (folder / "policy_preprocessor.json").write_text(json.dumps(pre))


def test_tokenizer_artifact_resolves_against_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lerobot >= 0.6.2 saves the tokenizer inside the checkpoint and writes "tokenizer_name": "tokenizer"."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf"))  # nothing cached: only the artifact can serve
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ref = load_file(str(HERE / "pi05" / "reference.safetensors"))
    folder = tmp_path / "pi05"
    shutil.copytree(HERE / "pi05", folder)
    _name_tokenizer_artifact(folder)
    elsewhere = tmp_path / "cwd"
    (elsewhere / "tokenizer").mkdir(parents=True)  # a decoy folder of that name in the working directory
    monkeypatch.chdir(elsewhere)
    policy = load("pi05", folder)
    assert Path(policy.config.tokenizer) == (folder / "tokenizer").resolve()
    assert torch.equal(policy.process(observation(ref))["tokens"], ref["mid.tokens"])
    shutil.rmtree(folder / "tokenizer")
    with pytest.raises(CheckpointError, match="artifact 'tokenizer'"):
        load("pi05", folder)


def test_smolvla_tokenizer_artifact_inside_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "smolvla"
    shutil.copytree(HERE / "smolvla", folder)
    shutil.copytree(folder / "vlm", folder / "tokenizer")
    (folder / "tokenizer" / "config.json").unlink()
    _name_tokenizer_artifact(folder)
    assert Path(load("smolvla", folder).config.tokenizer) == (folder / "tokenizer").resolve()


# ------------------------------------------------------------------------------------------ normalisation
def lerobot_normalize(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, eps: float) -> torch.Tensor:
    denom = torch.where(hi - lo == 0, torch.tensor(eps), hi - lo)
    return 2 * (x - lo) / denom - 1


@pytest.mark.parametrize(
    "mode,keys", [("QUANTILES", ("q01", "q99")), ("QUANTILE10", ("q10", "q90")), ("MIN_MAX", ("min", "max"))]
)
def test_range_modes_and_equal_bounds_as_lerobot(mode: str, keys: tuple[str, str]) -> None:
    lo = torch.tensor([-1.0, 0.5, 0.25, -3.0])
    hi = torch.tensor([1.0, 0.5, 0.75, -3.0])  # dims 1 and 3: equal bounds (a constant joint)
    norm = Normalizer({"state": 4, "action": 4})
    norm.set("state", {keys[0]: lo, keys[1]: hi}, mode)
    x = torch.tensor([[0.3, 0.5, 0.3, -3.0], [-2.0, 0.5 + 1e-6, 0.7, -3.5]])
    expect = lerobot_normalize(x, lo, hi, 1e-8)
    got = norm.normalize("state", x)
    assert torch.allclose(got, expect, rtol=1e-5, atol=1e-5)
    assert got[0, 1] == -1 and got[0, 3] == -1  # exactly on the constant: −1, as lerobot
    y = torch.tensor([[-1.0, -1.0, 0.2, 0.7]])
    assert torch.allclose(
        norm.unnormalize("state", y), (y + 1) * torch.where(hi == lo, torch.tensor(1e-8), hi - lo) / 2 + lo
    )
    stats = norm.stats("state", mode)  # what an export writes gives the same map back
    again = Normalizer({"state": 4, "action": 4})
    again.set("state", stats, mode)
    assert torch.equal(again.normalize("state", x), got)


# ------------------------------------------------------------------------------------------ Hub ids
def test_checkpoint_hub_id_from_the_local_cache(hf_home: Path) -> None:
    cached_repo(hf_home / "hub", "acme/pi05_tiny", HERE / "pi05")
    policy, folder = load_teacher("acme/pi05_tiny")
    assert folder.parent.parent.name == "models--acme--pi05_tiny" and policy.config.variant == "pi05"
    with pytest.raises(HubNotCached) as err:
        load_teacher("acme/missing")
    msg = str(err.value)
    assert str(hf_home / "hub" / "models--acme--missing") in msg and "hf download acme/missing" in msg
    assert "HF_HUB_OFFLINE" in msg


def test_smolvla_vlm_model_name_hub_id(tmp_path: Path, hf_home: Path) -> None:
    cached_repo(hf_home / "hub", "acme/tiny-smolvlm", HERE / "smolvla" / "vlm")
    folder = tmp_path / "smolvla"
    shutil.copytree(HERE / "smolvla", folder, ignore=shutil.ignore_patterns("vlm"))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["vlm_model_name"] = "acme/tiny-smolvlm"
    (folder / "config.json").write_text(json.dumps(cfg))
    pre = json.loads((folder / "policy_preprocessor.json").read_text())
    for step in pre["steps"]:
        if step["registry_name"] == "tokenizer_processor":
            step["config"]["tokenizer_name"] = "acme/tiny-smolvlm"
    (folder / "policy_preprocessor.json").write_text(json.dumps(pre))
    ref = load_file(str(HERE / "smolvla" / "reference.safetensors"))
    policy = load("smolvla", folder)
    actions = policy.sample_actions(observation(ref), steps=10, noise=ref["in.noise"], mode="diagonal")
    assert float((actions - ref["out.actions"]).abs().max()) <= TOL


def test_dataset_hub_id_in_lerobot_cache(tmp_path: Path, hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lr_home = tmp_path / "lerobot_home"
    monkeypatch.setenv("HF_LEROBOT_HOME", str(lr_home))
    snap = cached_repo(lr_home / "hub", "acme/tiny_current", HERE / "dataset_v30_image", "dataset", ref="v3.0")
    assert resolve_data("acme/tiny_current") == snap  # lerobot >= 0.5: snapshots under $HF_LEROBOT_HOME/hub
    shutil.copytree(HERE / "dataset_v30_image", lr_home / "acme" / "older")
    assert resolve_data("acme/older") == lr_home / "acme" / "older"  # lerobot's older plain layout
    with pytest.raises(HubNotCached, match="datasets--acme--nothing"):
        resolve_data("acme/nothing")
    assert resolve("./acme/nothing") == Path("acme/nothing")  # an explicit path is never an id


def test_dataset_written_by_current_lerobot_reads_back_exactly() -> None:
    ds = LeRobotV3Dataset(HERE / "dataset_v30_image")
    ref = load_file(str(HERE / "dataset_v30_image.reference.safetensors"))
    meta = json.loads((HERE / "dataset_v30_image.reference.json").read_text())
    assert [len(ds.episode(i)) for i in range(len(ds))] == meta["episodes"]
    state = np.concatenate([ds.episode(i).state for i in range(len(ds))])
    action = np.concatenate([ds.episode(i).action for i in range(len(ds))])
    images = np.concatenate([ds.episode(i).images["base"] for i in range(len(ds))])
    np.testing.assert_array_equal(state, ref["state"].numpy())
    np.testing.assert_array_equal(action, ref["action"].numpy())
    np.testing.assert_array_equal(images, ref["image"].numpy())
    assert [ds.episode(i).instruction for i in range(len(ds))] == meta["tasks"]


# ------------------------------------------------------------------------------------------ export
def lerobot_view(folder: Path) -> Path:
    """The exported folder as lerobot sees it: without our own policydistill.json / extra tensors."""
    for name in ("policydistill.json", "policydistill_extra.safetensors"):
        (folder / name).unlink(missing_ok=True)
    return folder


@pytest.mark.parametrize("name", ["pi0", "pi05", "smolvla"])
def test_one_step_student_folds_exactly_into_lerobot_weights(name: str, tmp_path: Path, hf_home: Path) -> None:
    ref = load_file(str(HERE / name / "reference.safetensors"))
    student = student_from_teacher(load(name)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        torch.nn.init.normal_(student.target_time.fc2.weight, std=0.5)  # a trained s-branch
    student.config.num_inference_steps, student.config.sampling_mode = 1, "flowmap"
    obs = observation(ref)
    chunk = student.sample_actions(obs, noise=ref["in.noise"])
    naive = student.sample_actions(obs, noise=ref["in.noise"], mode="diagonal")
    assert float((chunk - naive).abs().max()) > 1e-3  # the branch matters
    out = lerobot_view(student.to_lerobot(tmp_path / name))
    lr_cfg = json.loads((out / "config.json").read_text())
    assert lr_cfg["num_steps" if name == "smolvla" else "num_inference_steps"] == 1
    if name != "smolvla":
        assert (out / "tokenizer" / "tokenizer.json").is_file()  # the tokenizer travels inside the folder
        tok = next(
            s
            for s in json.loads((out / "policy_preprocessor.json").read_text())["steps"]
            if s["registry_name"] == "tokenizer_processor"
        )
        assert tok["artifacts"] == {"tokenizer_name": "tokenizer"}
    # tiny SigLIP: its head count is not in any shape (the fixture builder recorded it)
    exported = load(name, out, **({} if name == "smolvla" else {"overrides": {"vision_heads": 2}}))
    assert exported.nfe == 1
    # what lerobot runs: its own 1-step Euler (no target time) on the exported weights
    again = exported.sample_actions(obs, noise=ref["in.noise"], mode="diagonal")
    assert float((again - chunk).abs().max()) <= TOL


def test_multi_step_flow_map_student_is_refused_with_the_reason(tmp_path: Path, hf_home: Path) -> None:
    student = student_from_teacher(load("pi05")).eval()
    with torch.no_grad():
        torch.nn.init.normal_(student.target_time.fc2.weight, std=0.5)
    student.config.num_inference_steps, student.config.sampling_mode = 4, "flowmap"
    with pytest.raises(CheckpointError, match="different target time s.*no target time"):
        student.to_lerobot(tmp_path / "x")
    teacher = load("pi05")  # no branch: exported as it is, with its own step count
    out = teacher.to_lerobot(tmp_path / "teacher")
    assert json.loads((out / "config.json").read_text())["num_inference_steps"] == 10


def test_padded_prompt_pi05_export_is_refused_for_current_lerobot(tmp_path: Path, hf_home: Path) -> None:
    policy = load("pi05", overrides={"state_prompt": "padded"})
    with pytest.raises(CheckpointError, match="unpadded state"):
        policy.to_lerobot(tmp_path / "x")
    assert (policy.to_lerobot(tmp_path / "y", allow_padded_state_prompt=True) / "config.json").is_file()


def test_relative_actions_survive_export(tmp_path: Path, hf_home: Path) -> None:
    policy = load("pi0")
    out = lerobot_view(policy.to_lerobot(tmp_path / "pi0"))
    folder = read_lerobot_folder(out)
    assert folder.relative_action_mask() == [True, True, False]
    assert folder.step("absolute_actions_processor", post=True)["config"]["enabled"] is True


def test_distill_writes_the_lerobot_folder_with_a_model_card(tmp_path: Path, hf_home: Path) -> None:
    from policydistill.pipeline.teacher_io import export_lerobot_student

    teacher = load("pi05")
    student = student_from_teacher(teacher).eval()
    with torch.no_grad():
        torch.nn.init.normal_(student.target_time.fc2.weight, std=0.5)
    student.config.num_inference_steps, student.config.sampling_mode = 1, "flowmap"
    row = {
        "label": "snapflow@1",
        "nfe": 1,
        "success_rate": 0.5,
        "action_mse": 0.1,
        "teacher_chunk_distance": 0.2,
        "latency_ms": {"denoise_p50": 1.5},
    }
    report = {
        "method": "snapflow",
        "steps": 1,
        "command": "policydistill distill pi0 ...",
        "variants": [row],
        "denoise_speedup": 9.0,
        "e2e_speedup": 3.0,
        "tasks": ["metaworld/push-v3"],
    }
    done = export_lerobot_student(student, HERE / "pi05", tmp_path, report)
    assert done == {"written": True, "path": str(tmp_path / "student_lerobot")}
    card = (tmp_path / "student_lerobot" / "README.md").read_text()
    assert "**snapflow**" in card and "| snapflow@1 | 1 | 0.500 |" in card and str(HERE / "pi05") in card
    student.config.num_inference_steps = 2  # a multi-step flow-map student: no folder, and the reason
    done = export_lerobot_student(student, HERE / "pi05", tmp_path / "two", report)
    assert not done["written"] and "no target time" in done["reason"]
    assert not export_lerobot_student(student, tmp_path, tmp_path / "ours", report)["written"]  # our own teacher


def test_peft_adapter_only_folder_says_merge_first(tmp_path: Path) -> None:
    folder = tmp_path / "peft"
    folder.mkdir()
    shutil.copy(HERE / "pi05" / "config.json", folder / "config.json")
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="PEFT adapters only.*merge"):
        read_lerobot_folder(folder)


@pytest.mark.parametrize("name", ["pi0", "smolvla"])
def test_export_rename_map_feeds_lerobot_env_camera_names(name: str, tmp_path: Path, hf_home: Path) -> None:
    rename = {
        "observation.images.image": "observation.images.base",
        "observation.images.image2": "observation.images.wrist",
    }
    out = load(name).to_lerobot(tmp_path / name, rename_map=rename)
    step = json.loads((out / "policy_preprocessor.json").read_text())["steps"][0]
    assert step["registry_name"] == "rename_observations_processor" and step["config"]["rename_map"] == rename

"""SmolVLA: parity with lerobot 0.4.4 (tests/fixtures/lerobot/smolvla), safe loading, the
prefix-once contract, the target-time branch and the lerobot round trip."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from policydistill.checkpoint import CheckpointError, load_model, save_model
from policydistill.core.embedding import sinusoidal_embedding
from policydistill.core.flowmap import student_from_teacher
from policydistill.core.sampler import sample
from policydistill.policies.smolvla import SmolVLA, preset
from policydistill.policies.smolvla.lerobot import LEFTOVERS, to_lerobot_key
from policydistill.zoo import build_model

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fixture_path(fixtures_dir: Path) -> Path:
    return fixtures_dir / "lerobot" / "smolvla"


@pytest.fixture(scope="module")
def ref(fixture_path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(fixture_path / "reference.safetensors"))


@pytest.fixture(scope="module")
def policy(fixture_path: Path) -> SmolVLA:
    return SmolVLA.from_lerobot(fixture_path).eval()


def model_inputs(ref: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fixture's MODEL inputs as our processed-observation dict."""
    return {
        "images": torch.stack([ref["in.images.0"], ref["in.images.1"]], dim=1),
        "image_masks": torch.stack([ref["in.img_masks.0"], ref["in.img_masks.1"]], dim=1),
        "tokens": ref["in.lang_tokens"],
        "token_masks": ref["in.lang_masks"],
        "state": ref["in.state_padded"],
    }


def raw_observation(policy: SmolVLA, ref: dict[str, torch.Tensor]) -> dict:
    """The POLICY inputs as lerobot's batch: [0,1] images, a raw (un-normalised) state, padding mask."""
    nz = policy.normalizer
    return {
        "observation.images.base": ref["in.raw_images.0"],
        "observation.images.wrist": ref["in.raw_images.1"],
        "observation.images.wrist_padding_mask": torch.tensor([True, False]),
        "observation.state": ref["in.state"] * nz.state_scale + nz.state_shift,
        "task": ["pick", "push"],
    }


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


# ------------------------------------------------------------------------------- parity
def test_loads_every_key_and_config(policy: SmolVLA, fixture_path: Path) -> None:
    cfg = policy.config
    assert (cfg.vlm_width, cfg.expert_width, cfg.num_vlm_layers, cfg.chunk_size) == (64, 48, 2, 8)
    assert not cfg.is_cross_layer(0) and cfg.is_cross_layer(1)
    assert cfg.tokenizer == str(fixture_path / "vlm")
    # every lerobot key is either one of ours or a known leftover, and every one of ours is written back
    keys = set(load_file(str(fixture_path / "model.safetensors")))
    ours = {to_lerobot_key(k) for k in policy.state_dict()} - {None}
    assert keys == ours | set(LEFTOVERS)
    assert set(policy.lerobot_extras) == set(LEFTOVERS)


def test_prefix_embedding_and_masks(policy: SmolVLA, ref: dict) -> None:
    with torch.no_grad():
        embs, pad, att = policy.embed_prefix(model_inputs(ref))
    assert maxdiff(embs, ref["out.prefix_embs"]) <= TOL
    assert torch.equal(pad, ref["out.prefix_pad_masks"]) and torch.equal(att, ref["out.prefix_att_masks"])
    emb = sinusoidal_embedding(ref["in.time_velocity"], policy.config.expert_width)
    assert maxdiff(emb, ref["out.time_emb"]) <= 1e-6


def test_velocity_with_cache_and_full_attention(policy: SmolVLA, ref: dict) -> None:
    t = ref["in.time_velocity"]
    with torch.no_grad():
        cached = policy.flow(ref["in.x_t"], t, t, policy.encode(model_inputs(ref)))
        joint = policy.flow_joint(ref["in.x_t"], t, t, model_inputs(ref))
    assert maxdiff(cached, ref["out.velocity"]) <= TOL
    assert maxdiff(joint, ref["out.velocity"]) <= TOL


def test_ten_step_actions(policy: SmolVLA, ref: dict) -> None:
    actions = sample(policy, ref["in.noise"], model_inputs(ref), steps=10, mode="diagonal")
    assert maxdiff(actions, ref["out.actions"]) <= TOL


def test_policy_predict_action_chunk_from_raw_observation(policy: SmolVLA, ref: dict) -> None:
    cond = policy.process(raw_observation(policy, ref))
    # the policy's own preprocessing reproduces lerobot's model inputs (images ×2−1, state MEAN_STD + pad)
    assert torch.equal(cond["images"][:, 0], ref["in.images.0"]) and torch.equal(
        cond["images"][:, 1], ref["in.images.1"]
    )
    assert torch.equal(cond["image_masks"][:, 1], ref["in.img_masks.1"])
    assert maxdiff(cond["state"], ref["in.state_padded"]) <= 1e-6
    cond["tokens"], cond["token_masks"] = ref["in.lang_tokens"], ref["in.lang_masks"]  # the fixture's fixed ids
    actions = policy.sample_actions(cond, steps=10, noise=ref["in.noise"], mode="diagonal")
    assert actions.shape == (2, 8, 3)
    # lerobot 0.4.4's predict_action_chunk returns NORMALISED actions (the postprocessor un-normalises)
    assert maxdiff(policy.normalizer.normalize("action", actions), ref["out.policy_predict_action_chunk"]) <= TOL


def test_loss_matches_lerobot(policy: SmolVLA, ref: dict) -> None:
    with torch.no_grad():
        loss, elementwise = policy.lerobot_loss(
            model_inputs(ref), ref["in.action_target_padded"], ref["in.noise"], ref["in.time_loss"]
        )
    assert maxdiff(elementwise, ref["out.loss_elementwise"]) <= TOL
    assert abs(loss.item() - ref["out.loss"].item()) <= 1e-6 * abs(ref["out.loss"].item())  # all 8 dims averaged
    with torch.no_grad():
        _, at_07 = policy.lerobot_loss(
            model_inputs(ref), ref["in.action_target_padded"], ref["in.noise"], ref["in.time_velocity"]
        )
    assert maxdiff(at_07, ref["out.loss_elementwise_t07"]) <= TOL


# ------------------------------------------------------------------------------- latency contract
def test_prefix_and_cross_kv_computed_once_per_chunk(policy: SmolVLA, ref: dict) -> None:
    calls = {"vision": 0, "vlm_q": 0, "cross_k": 0, "cross_v": 0, "expert_q": 0}
    hooks = [
        policy.vision.embeddings.patch_embedding.register_forward_hook(
            lambda *a: calls.__setitem__("vision", calls["vision"] + 1)
        ),
        policy.vlm_layers[0].self_attn.q_proj.register_forward_hook(
            lambda *a: calls.__setitem__("vlm_q", calls["vlm_q"] + 1)
        ),
        policy.expert_layers[1].self_attn.k_proj.register_forward_hook(
            lambda *a: calls.__setitem__("cross_k", calls["cross_k"] + 1)
        ),
        policy.expert_layers[1].self_attn.v_proj.register_forward_hook(
            lambda *a: calls.__setitem__("cross_v", calls["cross_v"] + 1)
        ),
        policy.expert_layers[0].self_attn.q_proj.register_forward_hook(
            lambda *a: calls.__setitem__("expert_q", calls["expert_q"] + 1)
        ),
    ]
    try:
        cond = model_inputs(ref)
        policy.sample_actions(cond, steps=10, noise=ref["in.noise"], mode="diagonal")
        assert calls == {"vision": 1, "vlm_q": 1, "cross_k": 1, "cross_v": 1, "expert_q": 10}
        # select_action: one chunk (prefix + 10 steps) per n_action_steps actions
        policy.reset()
        for _ in range(policy.config.n_action_steps + 1):
            policy.select_action(cond)
        assert calls["vision"] == 3 and calls["cross_k"] == 3 and calls["expert_q"] == 30
    finally:
        for h in hooks:
            h.remove()
        policy.reset()


# ------------------------------------------------------------------------------- safe loading
def _copy_fixture(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for f in dst.rglob("*"):
        f.chmod(0o644 if f.is_file() else 0o755)
    return dst


def test_wrong_shaped_tensor_is_reported(fixture_path: Path, tmp_path: Path) -> None:
    folder = _copy_fixture(fixture_path, tmp_path / "bad")
    state = load_file(str(folder / "model.safetensors"))
    key = "model.vlm_with_expert.lm_expert.layers.1.self_attn.k_proj.weight"
    state[key] = torch.zeros(32, 48)  # a self-attention-shaped k_proj where a cross-attention one belongs
    del state["model.action_out_proj.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        SmolVLA.from_lerobot(folder)
    msg = str(err.value)
    assert "expert_layers.1.self_attn.k_proj.weight is (32, 48) in the file but (32, 32) in the model" in msg
    assert "action_out_proj.bias (8,)" in msg


def test_pickle_is_refused(fixture_path: Path, tmp_path: Path) -> None:
    folder = _copy_fixture(fixture_path, tmp_path / "pickled")
    torch.save({"x": torch.zeros(1)}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="never unpickles"):
        SmolVLA.from_lerobot(folder)


def test_missing_vlm_folder_names_what_is_missing(fixture_path: Path, tmp_path: Path) -> None:
    folder = _copy_fixture(fixture_path, tmp_path / "novlm")
    shutil.rmtree(folder / "vlm")
    with pytest.raises(CheckpointError, match="vlm_model_name 'vlm'"):
        SmolVLA.from_lerobot(folder)


# ------------------------------------------------------------------------------- round trips
def test_to_lerobot_round_trip(policy: SmolVLA, ref: dict, tmp_path: Path, fixture_path: Path) -> None:
    out = policy.to_lerobot(tmp_path / "rt")
    assert set(load_file(str(out / "model.safetensors"))) == set(load_file(str(fixture_path / "model.safetensors")))
    assert (out / "vlm" / "tokenizer.json").is_file()
    again = SmolVLA.from_lerobot(out).eval()
    a = sample(policy, ref["in.noise"], model_inputs(ref), steps=10, mode="diagonal")
    b = sample(again, ref["in.noise"], model_inputs(ref), steps=10, mode="diagonal")
    assert torch.equal(a, b)
    assert torch.allclose(again.normalizer.action_scale, policy.normalizer.action_scale)


def test_native_checkpoint_and_zoo(tmp_path: Path) -> None:
    model = SmolVLA.from_preset("tiny").eval()
    rebuilt = build_model(model.config_dict())
    assert isinstance(rebuilt, SmolVLA) and rebuilt.config == model.config
    save_model(tmp_path / "m", model)
    loaded = load_model(tmp_path / "m").eval()
    obs = {
        "observation.images.base": torch.rand(2, 3, 32, 32),
        "observation.images.wrist": torch.rand(2, 3, 32, 32),
        "observation.state": torch.randn(2, 4),
        "task": "pick the cube",
    }
    noise = torch.randn(2, 8, 8)
    assert torch.equal(
        model.sample_actions(obs, steps=2, noise=noise), loaded.sample_actions(obs, steps=2, noise=noise)
    )


# ------------------------------------------------------------------------------- flow-map contract
def test_target_time_zero_init_and_fold_into_lerobot(policy: SmolVLA, ref: dict, tmp_path: Path) -> None:
    student = student_from_teacher(policy).eval()
    cond = model_inputs(ref)
    x, one, zero = ref["in.noise"], torch.ones(2), torch.zeros(2)
    with torch.no_grad():
        ctx = student.encode(cond)
        assert torch.equal(student.flow(x, one, zero, ctx), policy.flow(x, one, one, policy.encode(cond)))
        torch.nn.init.normal_(student.target_time.fc2.weight, std=0.5)  # a "trained" s-branch
        jump = x - student.flow(x, one, zero, ctx)  # the 1-step map x1 → x0
    assert maxdiff(jump, x - student.flow(x, one, one, ctx)) > 1e-3  # s now matters
    with pytest.raises(CheckpointError, match="fold_target_time"):
        student.to_lerobot(tmp_path / "student")
    exported = SmolVLA.from_lerobot(student.to_lerobot(tmp_path / "student", fold_target_time=0.0)).eval()
    assert exported.config.num_inference_steps == 1
    # lerobot's own 1-step Euler with the folded bias (its model knows only t) equals the student's jump
    assert maxdiff(sample(exported, x, cond, steps=1, mode="diagonal"), jump) <= TOL


def test_batch_of_samples_per_observation(policy: SmolVLA, ref: dict) -> None:
    """flow() accepts k samples per encoded observation (distillation draws several noises)."""
    cond = model_inputs(ref)
    ctx = policy.encode(cond)
    x = torch.randn(4, 8, 8)
    t = torch.full((4,), 0.4)
    with torch.no_grad():
        both = policy.flow(x, t, t, ctx)
        first = policy.flow(x[0::2], t[:2], t[:2], ctx)
    assert maxdiff(both[0::2], first) <= 1e-6


def test_gradients_reach_expert_and_target_time(policy: SmolVLA, ref: dict) -> None:
    student = student_from_teacher(policy)
    x, t = ref["in.x_t"], torch.full((2,), 0.5)
    out = student(x, t, torch.zeros(2), model_inputs(ref))
    out.square().mean().backward()
    assert student.target_time.fc2.weight.grad.abs().sum() > 0
    assert student.expert_layers[1].self_attn.k_proj.weight.grad.abs().sum() > 0


def test_math_attention_matches_sdpa(policy: SmolVLA, ref: dict) -> None:
    t = ref["in.time_velocity"]
    with torch.no_grad():
        policy.math_attention = True
        try:
            v = policy.forward(ref["in.x_t"], t, t, model_inputs(ref))
        finally:
            policy.math_attention = False
    assert maxdiff(v, ref["out.velocity"]) <= TOL


# ------------------------------------------------------------------------------- presets / tokenizer
def test_presets_sizes() -> None:
    assert SmolVLA.from_preset("tiny").num_parameters() < 1_000_000
    with torch.device("meta"):  # sizes only: no weight initialisation
        small, full = SmolVLA.from_preset("small"), SmolVLA.from_preset("full")
    assert 2_000_000 < small.num_parameters() < 10_000_000
    cfg = full.config
    assert (cfg.vlm_width, cfg.expert_width, cfg.num_vlm_layers, cfg.chunk_size, cfg.num_inference_steps) == (
        960,
        720,
        16,
        50,
        10,
    )
    assert cfg.expert_mlp_size == 2048 and cfg.tokens_per_image == 64
    assert 350e6 < full.num_parameters() < 450e6
    with pytest.raises(ValueError, match="valid: tiny, small, ref, full"):
        preset("huge")


def test_tokenizer_from_vlm_folder(policy: SmolVLA) -> None:
    pytest.importorskip("tokenizers")
    out = policy.encode_inputs(["pick the cube", "push the block to goal"], torch.zeros(2, 8))
    assert out["tokens"].tolist() == [[8, 10, 11, 0, 0], [12, 10, 13, 14, 15]]  # padded to the longest
    assert out["token_masks"].sum(1).tolist() == [3, 5]


def test_tokenizer_missing_package_is_named(fixture_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "tokenizers", None)
    p = SmolVLA.from_lerobot(fixture_path)
    with pytest.raises(ImportError, match="tokenizers"):
        p.encode_inputs(["pick"], torch.zeros(1, 8))


def test_non_square_images_use_smolvla_padding() -> None:
    """lerobot's SmolVLA pads on the left/top (not centred): a 16×32 image becomes 32×32 with the
    padding rows on top; env (uint8 HWC) and lerobot (float CHW) formats give the same input."""
    p = SmolVLA.from_preset("tiny")
    img = torch.rand(1, 3, 16, 32)
    c = p.canonical_obs(
        {"observation.images.base": img, "observation.images.wrist": img, "observation.state": torch.zeros(1, 4)}
    )
    out = c["images"][0]
    assert out.shape == (1, 3, 32, 32)
    assert torch.equal(out[:, :, :16], torch.zeros(1, 3, 16, 32))
    assert torch.allclose(out[:, :, 16:], img)
    u8 = (torch.rand(1, 16, 32, 3) * 255).to(torch.uint8)
    env = p.canonical_obs({"pixels": {"base": u8.numpy(), "wrist": u8.numpy()}, "agent_pos": torch.zeros(1, 4)})
    lr = p.canonical_obs(
        {
            "observation.images.base": u8.permute(0, 3, 1, 2).float() / 255,
            "observation.images.wrist": u8.permute(0, 3, 1, 2).float() / 255,
            "observation.state": torch.zeros(1, 4),
        }
    )
    assert torch.equal(env["images"][1], lr["images"][1])


def test_bfloat16_inference_runs() -> None:
    p = SmolVLA.from_preset("tiny").eval()
    obs = {
        "observation.images.base": torch.rand(2, 3, 32, 32),
        "observation.images.wrist": torch.rand(2, 3, 32, 32),
        "observation.state": torch.randn(2, 4),
        "task": "pick the cube",
    }
    noise = torch.randn(2, 8, 8)
    ref32 = p.sample_actions(obs, steps=1, noise=noise)
    out = p.to(torch.bfloat16).sample_actions(obs, steps=1, noise=noise)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert maxdiff(out, ref32) <= 0.1 * float(ref32.abs().max())


def test_vision_position_rules() -> None:
    """transformers 4.57 (lerobot 0.4.4, the fixture) shifts SmolVLM's patch positions: i/n·(1−1e−6) lies
    just below bucket i, so each axis reads [0, 0, 1, …, n−2]; the older rule is the identity."""
    from policydistill.policies.smolvla.model import vision_position_ids

    assert torch.equal(vision_position_ids(32, "identity"), torch.arange(1024))
    axis = torch.tensor([0, 0, 1, 2])
    assert torch.equal(vision_position_ids(4, "hf457"), (axis[:, None] * 4 + axis[None, :]).flatten())
    with pytest.raises(ValueError, match="vision_positions"):
        vision_position_ids(4, "other")


@pytest.mark.parametrize(
    "overrides",
    [
        {"attention_mode": "self_attn"},
        {"num_vlm_layers": 4, "self_attn_every_n_layers": 3},
        {"prefix_length": 40},
    ],
)
def test_cached_path_equals_joint_path(overrides: dict) -> None:
    """The cached, expert-only denoising step is exactly lerobot's joint forward, whatever the layer mix."""
    p = SmolVLA.from_preset("tiny", **overrides).eval()
    obs = {
        "observation.images.base": torch.rand(2, 3, 32, 32),
        "observation.images.wrist": torch.rand(2, 3, 32, 32),
        "observation.images.wrist_padding_mask": torch.tensor([True, False]),
        "observation.state": torch.randn(2, 4),
        "task": ["pick the cube", "push"],
    }
    cond = p.process(obs)
    x, t = torch.randn(2, 8, 8), torch.tensor([0.3, 0.9])
    with torch.no_grad():
        assert maxdiff(p.flow(x, t, t, p.encode(cond)), p.flow_joint(x, t, t, cond)) <= 1e-5


def test_old_layout_normalisation_buffers(fixture_path: Path, tmp_path: Path) -> None:
    """lerobot 0.3.x folders (e.g. lerobot/smolvla_base) keep the normaliser inside model.safetensors
    (``normalize_inputs.buffer_observation_state.mean`` …) and may carry torch.compile's ``_orig_mod``."""
    folder = _copy_fixture(fixture_path, tmp_path / "old")
    for f in folder.glob("policy_*"):
        f.unlink()
    state = {
        k.replace("model.", "model._orig_mod.", 1): v for k, v in load_file(str(folder / "model.safetensors")).items()
    }
    state["normalize_inputs.buffer_observation_state.mean"] = torch.tensor([0.1, -0.2, 0.3, 0.0])
    state["normalize_inputs.buffer_observation_state.std"] = torch.tensor([0.5, 1.0, 2.0, 0.25])
    state["normalize_targets.buffer_action.mean"] = torch.tensor([0.05, 0.0, -0.1])
    state["normalize_targets.buffer_action.std"] = torch.tensor([0.3, 0.7, 1.5])
    state["unnormalize_outputs.buffer_action.mean"] = torch.tensor([0.05, 0.0, -0.1])
    state["unnormalize_outputs.buffer_action.std"] = torch.tensor([0.3, 0.7, 1.5])
    save_file(state, str(folder / "model.safetensors"))
    p = SmolVLA.from_lerobot(folder)
    assert torch.allclose(p.normalizer.state_shift, torch.tensor([0.1, -0.2, 0.3, 0.0]))
    assert torch.allclose(p.normalizer.action_scale, torch.tensor([0.3, 0.7, 1.5]) + 1e-8)


def test_missing_tokenizer_is_an_error_not_a_silent_fallback(fixture_path: Path, tmp_path: Path) -> None:
    folder = _copy_fixture(fixture_path, tmp_path / "notok")
    (folder / "vlm" / "tokenizer.json").unlink()
    p = SmolVLA.from_lerobot(folder)  # weights load; pre-tokenised batches still work
    with pytest.raises(FileNotFoundError, match="SmolVLM tokenizer.json"):
        p.encode_inputs(["pick"], torch.zeros(1, 8))


def test_builtin_tokenizer_survives_lerobot_round_trip(tmp_path: Path) -> None:
    p = SmolVLA.from_preset("tiny")
    again = SmolVLA.from_lerobot(p.to_lerobot(tmp_path / "tiny"))
    assert again.config.tokenizer == "builtin"
    tasks = ["pick the cube"]
    assert torch.equal(
        again.encode_inputs(tasks, torch.zeros(1, 8))["tokens"], p.encode_inputs(tasks, torch.zeros(1, 8))["tokens"]
    )

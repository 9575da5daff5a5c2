"""pi0 / pi0.5 against lerobot 0.4.4's own outputs (tests/fixtures/lerobot/{pi0,pi05})."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from policydistill.core import sample_with_ctx
from policydistill.policies.pi0 import Pi0Policy
from policydistill.policies.pi0.processor import pi05_prompts

TOL = 1e-5


@pytest.fixture(params=["pi0", "pi05"])
def loaded(request, fixtures_dir):
    folder = fixtures_dir / "lerobot" / request.param
    policy = Pi0Policy.from_lerobot(folder)
    ref = load_file(str(folder / "reference.safetensors"))
    cond = {
        "images": torch.stack([ref["in.images.0"], ref["in.images.1"]], 1),
        "image_masks": torch.stack([ref["in.img_masks.0"], ref["in.img_masks.1"]], 1),
        "tokens": ref["in.lang_tokens"],
        "token_masks": ref["in.lang_masks"],
        "state": ref.get("in.state_padded", torch.zeros(2, 8)),
    }
    return request.param, folder, policy, ref, cond


def test_sizes_inferred_from_shapes(loaded):
    name, folder, policy, _, _ = loaded
    arch = json.loads((folder / "reference.json").read_text())["architecture_overrides_NOT_in_config_json"]
    cfg = policy.config
    vlm, exp = arch["paligemma(gemma_2b)"], arch["action_expert(gemma_300m)"]
    assert (cfg.vlm_width, cfg.vlm_depth, cfg.vlm_mlp_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (
        vlm["width"],
        vlm["depth"],
        vlm["mlp_dim"],
        vlm["num_heads"],
        vlm["num_kv_heads"],
        vlm["head_dim"],
    )
    assert (cfg.expert_width, cfg.expert_mlp_dim) == (exp["width"], exp["mlp_dim"])
    assert (cfg.vision_width, cfg.patch_size, cfg.image_size, cfg.vocab_size) == (32, 8, 32, 64)
    assert cfg.variant == name and cfg.cameras == ["base", "wrist"]


def test_embed_prefix_and_time_embedding(loaded):
    _, _, policy, ref, cond = loaded
    with torch.no_grad():
        embs, valid = policy.embed_prefix(cond["images"], cond["image_masks"], cond["tokens"], cond["token_masks"])
        temb = policy.time_embedding(ref["in.time_velocity"], torch.float32)
    assert (embs - ref["out.prefix_embs"]).abs().max() <= TOL
    assert torch.equal(valid, ref["out.prefix_pad_masks"])
    assert not ref["out.prefix_att_masks"].any()  # the whole prefix is one bidirectional block
    assert (temb - ref["out.time_emb"]).abs().max() <= TOL


def test_velocity_cached_and_full_attention(loaded):
    _, _, policy, ref, cond = loaded
    t = ref["in.time_velocity"]
    with torch.no_grad():
        cached = policy.flow(ref["in.x_t"], t, t, policy.encode(cond))
        full = policy.velocity_full_attention(ref["in.x_t"], t, cond)
    assert (cached - ref["out.velocity"]).abs().max() <= TOL
    assert (full - ref["out.velocity"]).abs().max() <= TOL


def test_velocity_with_grad_path_and_unskipped_prefix(loaded):
    """Training path (grad on: cache concatenated, not written in place) and the prefix
    computed in full (last layer not skipped) give the same velocity."""
    _, _, policy, ref, cond = loaded
    t = ref["in.time_velocity"]
    v = policy(ref["in.x_t"], t, t, cond)
    assert v.requires_grad and (v.detach() - ref["out.velocity"]).abs().max() <= TOL
    policy.config.prefix_skip_last = False
    with torch.no_grad():
        v2 = policy.flow(ref["in.x_t"], t, t, policy.encode(cond))
    assert (v2 - ref["out.velocity"]).abs().max() <= TOL


def test_ten_step_actions(loaded):
    _, _, policy, ref, cond = loaded
    with torch.no_grad():
        actions = sample_with_ctx(policy, ref["in.noise"], policy.encode(cond), 10, "diagonal")
    assert (actions - ref["out.actions"]).abs().max() <= TOL


def test_loss(loaded):
    _, _, policy, ref, cond = loaded
    t, a, noise = ref["in.time_loss"], ref["in.action_target_padded"], ref["in.noise"]
    x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * a
    with torch.no_grad():
        elem = (noise - a - policy(x_t, t, t, cond)) ** 2
    assert (elem - ref["out.loss_elementwise"]).abs().max() <= TOL
    loss = elem[..., :3].mean()
    assert abs(loss - ref["out.loss"]) <= 1e-6 * abs(ref["out.loss"]) + 1e-7


def test_normaliser_stats_loaded(loaded):
    name, _, policy, _, _ = loaded
    x = torch.tensor([[0.1, -0.2, 0.3, 0.0], [0.6, 0.8, 2.3, 0.25]])
    if name == "pi0":
        want = (x - torch.tensor([0.1, -0.2, 0.3, 0.0])) / torch.tensor([0.5, 1.0, 2.0, 0.25])
    else:  # QUANTILES: [q01, q99] = [-0.9, 0.9] → [-1, 1]
        want = 2 * (x + 0.9) / 1.8 - 1
    assert torch.allclose(policy.normalizer.normalize("state", x), want, atol=1e-6)


def test_images_preprocessed_like_lerobot(loaded):
    _, _, policy, ref, _ = loaded
    obs = {
        "observation.images.base": ref["in.raw_images.0"],
        "observation.images.wrist": ref["in.raw_images.1"],
        "observation.state": torch.zeros(2, 4),
        "task": ["pick the cube", "push block"],
    }
    policy.encode_inputs = lambda tasks, state: {"tokens": ref["in.lang_tokens"], "token_masks": ref["in.lang_masks"]}
    cond = policy.process(obs)
    assert torch.equal(cond["images"][:, 0], ref["in.images.0"]) and torch.equal(
        cond["images"][:, 1], ref["in.images.1"]
    )


def test_pi05_prompt_matches_lerobot(fixtures_dir):
    folder = fixtures_dir / "lerobot" / "pi05"
    ref = load_file(str(folder / "reference.safetensors"))
    want = json.loads((folder / "reference.json").read_text())["pi05_prompts_for_in_state"]
    state = torch.nn.functional.pad(ref["in.state_unused"], (0, 4))
    assert pi05_prompts(["pick the cube", "push_block\n"], state) == want
    # np.digitize edges: below -1 → -1, at/above 1 → 255, -1 → 0
    from policydistill.policies.pi0.processor import discretize_state

    assert discretize_state(torch.tensor([[-1.5, -1.0, 0.0, 0.999, 1.0, 7.0]])).tolist() == [
        [-1, 0, 128, 255, 255, 255]
    ]
    assert np.digitize(0.0, np.linspace(-1, 1, 257)[:-1]) - 1 == 128


def test_to_lerobot_round_trip(loaded, tmp_path):
    name, _, policy, ref, cond = loaded
    with torch.no_grad():
        policy.target_time.fc2.weight.normal_()  # a 1-step "student": its s = 0 branch is folded into lerobot's biases
        before = policy.flow(ref["in.x_t"], ref["in.time_velocity"], torch.zeros(2), policy.encode(cond))
    policy.config.num_inference_steps, policy.config.sampling_mode = 1, "flowmap"
    out = policy.to_lerobot(tmp_path / name, allow_padded_state_prompt=True)  # a lerobot 0.4.4 fixture
    keys = set(load_file(str(out / "model.safetensors")))
    assert "model.paligemma_with_expert.paligemma.lm_head.weight" in keys
    assert not any(k.startswith(("target_time", "normalizer")) for k in keys)
    again = Pi0Policy.from_lerobot(out)
    with torch.no_grad():
        after = again.flow(ref["in.x_t"], ref["in.time_velocity"], torch.zeros(2), again.encode(cond))
    assert float((before - after).abs().max()) <= 1e-5
    assert torch.equal(again.normalizer.action_scale, policy.normalizer.action_scale)

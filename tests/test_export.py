"""Exported programs (torch.export, ONNX) reproduce the eager policy."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from policydistill.deploy.export import (
    example_observation,
    export_onnx,
    export_policy,
    onnx_sample_actions,
    save_exported,
)
from policydistill.policies.pi0 import Pi0Policy, Pi05Policy


def _policy(cls):
    torch.manual_seed(0)
    p = cls.from_preset("tiny", state_dim=21, action_dim=4, max_state_dim=24, max_action_dim=8).eval()
    for prm in p.parameters():  # non-trivial weights everywhere, the target-time branch included
        torch.nn.init.normal_(prm, std=0.1)
    return p


@pytest.mark.parametrize("cls", [Pi0Policy, Pi05Policy], ids=["pi0", "pi05"])
def test_torch_export_matches_eager(cls, tmp_path):
    policy = _policy(cls)
    obs = example_observation(policy, batch=2)
    exported = export_policy(policy, obs)
    noise = torch.randn(2, *policy.sample_shape())
    for mode, steps in (
        ("diagonal", 10),
        ("flowmap", 1),
        ("flowmap", 2),
        ("consistency", 2),
        ("consistency_deterministic", 2),
    ):
        torch.manual_seed(1)  # the consistency sampler's fresh noise comes from the global RNG
        eager = policy.sample_actions(obs, steps=steps, mode=mode, noise=noise)
        torch.manual_seed(1)
        ours = exported.sample_actions(obs, steps=steps, mode=mode, noise=noise)
        torch.testing.assert_close(ours, eager, atol=1e-5, rtol=0)
    paths = save_exported(exported, tmp_path)
    reloaded = torch.export.load(str(paths[1]))
    assert reloaded.graph_signature is not None


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None,
    reason="the onnx extra is not installed",
)
def test_onnx_export_matches_eager(tmp_path):
    policy = _policy(Pi0Policy)
    obs = example_observation(policy, batch=1)
    export_onnx(export_policy(policy, obs), obs, tmp_path)
    noise = torch.randn(1, *policy.sample_shape())
    for mode, steps in (("diagonal", 10), ("flowmap", 1)):
        eager = policy.sample_actions(obs, steps=steps, mode=mode, noise=noise)
        got = onnx_sample_actions(tmp_path, policy, obs, steps, mode, noise)
        torch.testing.assert_close(got, eager, atol=1e-4, rtol=0)

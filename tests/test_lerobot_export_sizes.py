"""Which pi0 / pi0.5 sizes a ``to_lerobot`` folder can be loaded at by stock lerobot.

lerobot builds pi0 / pi0.5 only as PaliGemma (Gemma-2B, SigLIP So400m/14, vocabulary 257152) with a
Gemma-300M or Gemma-2B action expert; config.json names the two Gemma variants and nothing else about
the sizes. Every other size is exported with ``"custom"`` variants, which lerobot's config refuses,
and a warning that names the size, what lerobot builds and what to do; the folder stays readable by
our own loader. The ``lerobot`` test has real lerobot refuse such a folder (deselected without
``PD_LEROBOT_PYTHON``)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from policydistill.policies.pi0.configuration import preset
from policydistill.policies.pi0.convert import lerobot_variants
from policydistill.policies.pi0.model import Pi0Policy, Pi05Policy

pytestmark = pytest.mark.usefixtures("one_thread")
LEROBOT_PYTHONS = [p for p in os.environ.get("PD_LEROBOT_PYTHON", "").split(os.pathsep) if p]


def test_only_lerobots_own_architectures_get_its_variant_names() -> None:
    assert lerobot_variants(preset("full")) == ("gemma_2b", "gemma_300m", [])
    assert lerobot_variants(preset("full", variant="pi05")) == ("gemma_2b", "gemma_300m", [])
    # a Gemma-2B expert is one of lerobot's two variants too
    assert lerobot_variants(preset("full", expert_width=2048, expert_mlp_dim=16384))[:2] == ("gemma_2b", "gemma_2b")
    for name in ("tiny", "small", "ref"):
        vlm, exp, differs = lerobot_variants(preset(name))
        assert (vlm, exp) == ("custom", "custom") and differs
    # lerobot's widths are not enough: its depth, heads, vocabulary and SigLIP tower are fixed as well
    vlm, exp, differs = lerobot_variants(preset("full", vlm_depth=4))
    assert (vlm, exp) == ("custom", "custom") and differs == ["vlm_depth 4 (lerobot: 18)"]
    vlm, exp, differs = lerobot_variants(preset("full", vision_depth=2))
    assert (vlm, exp) == ("custom", "gemma_300m") and differs == ["vision_depth 2 (lerobot: 27)"]


def test_lerobots_widths_at_other_depths_are_not_written_as_lerobot_variants(tmp_path: Path) -> None:
    """A VLM 2048 wide and an expert 1024 wide at other depths, MLPs and heads: lerobot would build
    Gemma-2B / Gemma-300M, load the tensors that fit and run the rest with random weights."""
    policy = Pi0Policy(preset("tiny", vlm_width=2048, expert_width=1024, vlm_depth=1, vocab_size=64))
    with pytest.warns(UserWarning, match="stock lerobot cannot build"):
        out = policy.to_lerobot(tmp_path / "wide")
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["paligemma_variant"], cfg["action_expert_variant"]) == ("custom", "custom")


@pytest.mark.parametrize(("cls", "size"), [(Pi0Policy, "small"), (Pi05Policy, "ref")])
def test_exporting_a_size_lerobot_cannot_build_warns_and_stays_readable_by_us(
    cls: type, size: str, tmp_path: Path
) -> None:
    policy = cls.from_preset(size).eval()
    with pytest.warns(UserWarning) as record:
        out = policy.to_lerobot(tmp_path / size)
    (message,) = [str(w.message) for w in record if "lerobot cannot build" in str(w.message)]
    kind = policy.config.variant
    assert f"this {kind} is the '{size}' preset, which stock lerobot cannot build" in message
    assert "Gemma-2B with the SigLIP So400m/14 tower, vocabulary 257152" in message
    assert "Gemma-300M or Gemma-2B action expert" in message
    assert '"custom" variants, which lerobot refuses' in message and "Pi0Policy.from_lerobot" in message
    assert "distil it from a full-size teacher" in message and str(out) in message
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["paligemma_variant"], cfg["action_expert_variant"]) == ("custom", "custom")
    again = cls.from_lerobot(out).eval()  # our reading of the folder: the same policy
    obs = {
        **{f"observation.images.{c}": torch.rand(1, 3, policy.config.image_size, policy.config.image_size)
           for c in policy.config.cameras},
        "observation.state": torch.randn(1, policy.config.state_dim),
        "task": ["pick up the cube"],
    }  # fmt: skip
    noise = torch.randn(1, *policy.sample_shape())
    with torch.no_grad():
        assert torch.equal(
            again.sample_actions(obs, steps=2, noise=noise), policy.sample_actions(obs, steps=2, noise=noise)
        )


@pytest.mark.lerobot
@pytest.mark.parametrize("python", LEROBOT_PYTHONS or ["none"])
def test_real_lerobot_refuses_a_custom_size_folder_by_its_variant(python: str, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="stock lerobot cannot build"):
        out = Pi0Policy.from_preset("small").to_lerobot(tmp_path / "small")
    code = (
        "import sys\nfrom lerobot.configs.policies import PreTrainedConfig\n"
        "import lerobot.policies.pi0.configuration_pi0\n"
        "try:\n    PreTrainedConfig.from_pretrained(sys.argv[1])\n"
        "except Exception as e:\n    while e is not None:  # draccus wraps the config's own error\n"
        "        print('REFUSED', type(e).__name__, e)\n        e = e.__cause__ or e.__context__\n"
        "else:\n    print('LOADED')\n"
    )
    proc = subprocess.run(
        [python, "-c", code, str(out)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "REFUSED" in proc.stdout and "Invalid paligemma_variant: custom" in proc.stdout, proc.stdout

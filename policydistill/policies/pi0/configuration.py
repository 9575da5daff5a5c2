"""pi0 / pi0.5 configuration and named presets.

pi0.5 is a ``variant`` of the same model, not a separate package: the two share the vision
tower, the VLM prefix, the expert stack, the KV cache, the loaders and the benchmark; they
differ in three places only (the state token vs the state in the prompt, the action_time
MLP vs adaRMS time conditioning, the key names of those few layers). Two copies would drift.

Presets (``PRESETS[variant][name]``):
  tiny   unit tests (< 1 M parameters)
  small  the bundled default, trainable on 2 CPU cores: Meta-World, ONE camera "corner2" at
         96 px, 39-d state, 4-d action, chunk 16 (executes 8), a short prompt (~3 M params)
  ref    the size lerobot 0.4.4 was timed at for the latency reference (VLM 256×4, expert 128×4, SigLIP
         128×2 @128 px, chunk 50, 16 tokens, dims padded to 32, 2 cameras)
  full   PaliGemma 2B + Gemma 300M expert, SigLIP So400m @224 px, chunk 50, dims 32
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

from ...fields import unknown_keys
from ..base import FlowPolicyConfig

VARIANTS = ("pi0", "pi05")
STATE_PROMPTS = ("raw", "padded")


@dataclass
class Pi0Config(FlowPolicyConfig):
    variant: str = "pi0"  # "pi0" (state token + action_time MLP) | "pi05" (adaRMS, state in prompt)
    vocab_size: int = 1024
    tokenizer: str = "builtin"  # "builtin", a local folder with tokenizer.json / tokenizer.model, or a Hub id
    #: pi0.5 only: which state is discretised into the prompt. "raw" = the state_dim real dims
    #: (openpi, lerobot >= 0.5); "padded" = zero-padded to max_state_dim first (lerobot 0.4.x,
    #: which adds max_state_dim − state_dim "128" tokens). A checkpoint must be run the way it
    #: was trained: from_lerobot detects it, our checkpoints record it.
    state_prompt: str = "raw"
    # VLM (Gemma) prefix
    vlm_width: int = 128
    vlm_depth: int = 4
    vlm_mlp_dim: int = 512
    num_heads: int = 4
    num_kv_heads: int = 1
    head_dim: int = 32
    # action expert (Gemma), same depth/heads/head_dim as the VLM: the two run layer by layer
    expert_width: int = 64
    expert_mlp_dim: int = 256
    # SigLIP vision tower
    vision_width: int = 96
    vision_depth: int = 2
    vision_heads: int = 4
    vision_mlp_dim: int = 384
    patch_size: int = 16
    # numerics
    rope_theta: float = 10000.0
    rms_eps: float = 1e-6
    ln_eps: float = 1e-6
    min_period: float = 4e-3
    max_period: float = 4.0
    #: skip computing the last VLM layer's attention output and MLP in the prefix pass
    #: (only its keys/values are ever read). Off only for the parity check of the full path.
    prefix_skip_last: bool = True

    INT_MAX: ClassVar[dict[str, int]] = {"vlm_depth": 1024, "vision_depth": 1024}

    def validate(self) -> Pi0Config:
        self.check()  # types and ranges of every field first: the checks below compare them
        if self.variant not in VARIANTS:
            raise ValueError(f"variant {self.variant!r}; valid: {', '.join(VARIANTS)}")
        if self.state_prompt not in STATE_PROMPTS:
            raise ValueError(f"state_prompt {self.state_prompt!r}; valid: {', '.join(STATE_PROMPTS)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.max_state_dim < self.state_dim or self.max_action_dim < self.action_dim:
            raise ValueError("max_state_dim/max_action_dim must be >= state_dim/action_dim")
        if self.expert_width % 2:
            raise ValueError("expert_width must be even (sin-cos time embedding)")
        self.cameras = list(self.cameras)
        return self


_TINY = dict(
    cameras=["corner2"],
    image_size=32,
    state_dim=4,
    action_dim=3,
    max_state_dim=8,
    max_action_dim=8,
    chunk_size=8,
    n_action_steps=8,
    tokenizer_max_length=12,
    vocab_size=320,
    vlm_width=64,
    vlm_depth=2,
    vlm_mlp_dim=128,
    num_heads=8,
    num_kv_heads=1,
    head_dim=8,
    expert_width=32,
    expert_mlp_dim=64,
    vision_width=32,
    vision_depth=1,
    vision_heads=2,
    vision_mlp_dim=64,
    patch_size=8,
)

# Meta-World on 2 CPU cores: 36 image tokens (96 px / patch 16), a short prompt, a narrow expert.
# chunk 16 executing 8 keeps the suffix short (16 tokens per step) and re-plans at ~10 Hz in a
# 80 Hz sim; no padding of the 4-d action (padding only helps when loading foreign checkpoints).
_SMALL = dict(
    cameras=["corner2"],
    image_size=96,
    state_dim=39,
    action_dim=4,
    max_state_dim=39,
    max_action_dim=4,
    chunk_size=16,
    n_action_steps=8,
    tokenizer_max_length=16,
    vocab_size=1024,
    vlm_width=192,
    vlm_depth=4,
    vlm_mlp_dim=768,
    num_heads=6,
    num_kv_heads=1,
    head_dim=32,
    expert_width=96,
    expert_mlp_dim=384,
    vision_width=128,
    vision_depth=3,
    vision_heads=4,
    vision_mlp_dim=512,
    patch_size=16,
)

# The lerobot latency reference size (timings quoted in cli/policies.py).
_REF = dict(
    cameras=["base", "wrist"],
    image_size=128,
    state_dim=32,
    action_dim=32,
    max_state_dim=32,
    max_action_dim=32,
    chunk_size=50,
    n_action_steps=50,
    tokenizer_max_length=16,
    vocab_size=1024,
    vlm_width=256,
    vlm_depth=4,
    vlm_mlp_dim=1024,
    num_heads=8,
    num_kv_heads=1,
    head_dim=32,
    expert_width=128,
    expert_mlp_dim=512,
    vision_width=128,
    vision_depth=2,
    vision_heads=4,
    vision_mlp_dim=512,
    patch_size=16,
)

# openpi pi0: PaliGemma (SigLIP So400m/14 @224 + Gemma 2B) and the Gemma 300M expert.
_FULL = dict(
    cameras=["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"],
    image_size=224,
    state_dim=32,
    action_dim=32,
    max_state_dim=32,
    max_action_dim=32,
    chunk_size=50,
    n_action_steps=50,
    tokenizer_max_length=48,
    vocab_size=257152,
    vlm_width=2048,
    vlm_depth=18,
    vlm_mlp_dim=16384,
    num_heads=8,
    num_kv_heads=1,
    head_dim=256,
    expert_width=1024,
    expert_mlp_dim=4096,
    vision_width=1152,
    vision_depth=27,
    vision_heads=16,
    vision_mlp_dim=4304,
    patch_size=14,
)

PRESETS: dict[str, dict] = {"tiny": _TINY, "small": _SMALL, "ref": _REF, "full": _FULL}


def preset(name: str, variant: str = "pi0", **overrides) -> Pi0Config:
    """A named preset for ``variant`` with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    fields = copy.deepcopy(PRESETS[name])
    if variant == "pi05":
        # pi0.5 puts the discretised state into the prompt: room for it in the token budget.
        fields["tokenizer_max_length"] = {"tiny": 24, "small": 64, "ref": 48, "full": 200}[name]
        # MEAN_STD (as our data pipeline computes) puts ~68% of states inside the [-1, 1) bins;
        # checkpoints from lerobot bring their own QUANTILES mode through from_lerobot.
    unknown = unknown_keys(Pi0Config, overrides)
    if unknown:
        raise ValueError(
            f"Pi0Config has no field(s) {', '.join(unknown)}; see the fields of "
            "policydistill.policies.pi0.configuration.Pi0Config"
        )
    fields.update(overrides)
    return Pi0Config(variant=variant, **fields).validate()


__all__ = ["Pi0Config", "PRESETS", "VARIANTS", "preset"]

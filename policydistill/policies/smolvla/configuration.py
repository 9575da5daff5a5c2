"""SmolVLA hyper-parameters as one typed dataclass, with named presets.

The architecture is lerobot's ``VLAFlowMatching`` (lerobot 0.4.4): a SmolVLM backbone (SigLIP-style
vision encoder → pixel-shuffle connector → Llama/SmolLM text model truncated to ``num_vlm_layers``)
and an action expert ``expert_width_multiplier`` × as wide, whose layers alternate between joint
self-attention with the prefix and cross-attention to the VLM keys/values.

Presets:
  * ``tiny``  — the shape of the lerobot parity fixture (< 1 M parameters), for unit tests.
  * ``small`` — the bundled default: a few million parameters, 96 px images, trainable on 2 CPU cores.
  * ``full``  — SmolVLA base: SmolVLM2-500M truncated to 16 layers, expert 0.75× width, 512 px,
    chunk 50, 10 steps, state/action padded to 32 (random weights for latency, or real checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from ..base import FlowPolicyConfig


def expert_intermediate_size(hidden: int, ffn_dim_multiplier: int = 4, multiple_of: int = 256) -> int:
    """lerobot's ``get_intermediate_size``: Llama's 2/3·4·d rounded up to a multiple of 256."""
    h = int(2 * hidden / 3)
    h = int(ffn_dim_multiplier * h)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


@dataclass
class SmolVLAConfig(FlowPolicyConfig):
    # --- inputs (FlowPolicyConfig fields, SmolVLA defaults = the parity fixture's shape) ---
    cameras: list[str] = field(default_factory=lambda: ["base", "wrist"])
    image_size: int = 32  # model input resolution (lerobot: resize_imgs_with_padding)
    state_dim: int = 4
    action_dim: int = 3
    max_state_dim: int = 8
    max_action_dim: int = 8
    chunk_size: int = 8
    n_action_steps: int = 8
    num_inference_steps: int = 10
    tokenizer_max_length: int = 8
    # "builtin" (file-free, our presets) or a local folder/file with tokenizer.json (lerobot's vlm/)
    tokenizer: str = "builtin"
    # --- vision tower (SmolVLM / Idefics3 SigLIP-style encoder) ---
    vision_image_size: int = 0  # the tower's trained size (position table); 0 = image_size
    patch_size: int = 8
    vision_width: int = 32
    vision_depth: int = 1
    vision_heads: int = 2
    vision_mlp: int = 64
    vision_eps: float = 1e-6
    scale_factor: int = 2  # pixel shuffle: scale_factor² patches → one token
    # patch position ids: "hf5" = transformers 5 (lerobot >= 0.5), "hf457" = transformers 4.57 (lerobot
    # 0.4.4), "identity" = older transformers; see model.vision_position_ids. from_lerobot detects it.
    vision_positions: str = "hf457"
    # --- text model (Llama / SmolLM2) ---
    vocab_size: int = 512
    vlm_width: int = 64
    num_vlm_layers: int = 2  # layers kept after truncation
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    vlm_mlp: int = 128
    rms_eps: float = 1e-6
    # lerobot's apply_rope hard-codes 10 000 whatever the text config's rope_theta says.
    rope_max_wavelength: float = 10_000.0
    # --- action expert ---
    expert_width_multiplier: float = 0.75
    expert_mlp: int = 0  # 0 = lerobot's get_intermediate_size(expert width)
    num_expert_layers: int = -1  # -1 (or num_vlm_layers): one expert layer per VLM layer
    attention_mode: str = "cross_attn"  # "cross_attn" or "self_attn"
    self_attn_every_n_layers: int = 2  # in cross_attn mode, layers i % n == 0 use joint self-attention
    # --- flow matching ---
    prefix_length: int = -1  # > 0 pads the prefix to this many tokens (lerobot option)
    min_period: float = 4e-3
    max_period: float = 4.0

    INT_MIN: ClassVar[dict[str, int]] = {
        **FlowPolicyConfig.INT_MIN,
        "vision_image_size": 0,
        "expert_mlp": 0,
        "num_expert_layers": -1,
        "prefix_length": -1,
    }
    INT_MAX: ClassVar[dict[str, int]] = {"vision_depth": 1024, "num_vlm_layers": 1024, "num_expert_layers": 1024}

    def __post_init__(self) -> None:
        self.check()  # types and ranges of every field first: the checks below compare them
        self.cameras = list(self.cameras)
        if self.rtc_training_max_delay:
            raise ValueError(
                "training-time RTC (rtc_training_max_delay > 0) is implemented for pi0 and pi0.5, not SmolVLA; "
                "use guided RTC at inference (sample_actions(..., rtc=...) with several steps) or a pi0/pi0.5 policy"
            )
        if self.attention_mode not in ("cross_attn", "self_attn"):
            raise ValueError(f"attention_mode must be 'cross_attn' or 'self_attn', got {self.attention_mode!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.tower_image_size % self.patch_size:
            raise ValueError(
                f"vision image size {self.tower_image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.image_size != self.tower_image_size:
            raise ValueError(
                f"image_size {self.image_size} differs from the vision tower's {self.tower_image_size}; "
                "resize the images to the tower's size (SmolVLA base: 512)"
            )
        side = self.tower_image_size // self.patch_size
        if side % self.scale_factor:
            raise ValueError(f"{side} patches per side is not divisible by scale_factor {self.scale_factor}")
        if self.num_expert_layers > 0 and self.num_expert_layers != self.num_vlm_layers:
            # lerobot accepts a divisor here, but its cached denoising then fails on VLM layers that have
            # no expert layer (empty query list), and in cross_attn mode the replaced k/v projections
            # land on the wrong layers. Only the working configuration is supported.
            raise ValueError(
                f"num_expert_layers must be -1 or num_vlm_layers ({self.num_vlm_layers}), got {self.num_expert_layers}"
            )
        if self.action_dim > self.max_action_dim or self.state_dim > self.max_state_dim:
            raise ValueError("action_dim/state_dim must not exceed max_action_dim/max_state_dim")
        if self.n_action_steps > self.chunk_size:
            raise ValueError(f"n_action_steps {self.n_action_steps} > chunk_size {self.chunk_size}")

    # --- derived sizes ---
    @property
    def expert_width(self) -> int:
        return int(self.vlm_width * self.expert_width_multiplier)

    @property
    def expert_mlp_size(self) -> int:
        return self.expert_mlp or expert_intermediate_size(self.expert_width)

    @property
    def tower_image_size(self) -> int:
        return self.vision_image_size or self.image_size

    @property
    def tokens_per_image(self) -> int:
        return (self.tower_image_size // self.patch_size) ** 2 // self.scale_factor**2

    def is_cross_layer(self, expert_index: int) -> bool:
        """Whether expert layer ``expert_index`` cross-attends to the VLM keys/values."""
        if self.attention_mode != "cross_attn":
            return False
        n = self.self_attn_every_n_layers
        return not (n > 0 and expert_index % n == 0)


PRESETS: dict[str, SmolVLAConfig] = {
    # The parity fixture's shape (tests/test_smolvla*.py); about 0.3 M parameters.
    "tiny": SmolVLAConfig(),
    # Bundled default: ~4 M parameters, 96 px, 2 cameras → 2×36 image tokens, 16 language tokens.
    "small": SmolVLAConfig(
        image_size=96,
        patch_size=8,
        vision_width=128,
        vision_depth=2,
        vision_heads=4,
        vision_mlp=512,
        scale_factor=2,
        vocab_size=512,
        vlm_width=256,
        num_vlm_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        vlm_mlp=512,
        chunk_size=50,
        n_action_steps=50,
        max_state_dim=32,
        max_action_dim=32,
        state_dim=32,
        action_dim=32,
        tokenizer_max_length=16,
    ),
    # The size at which lerobot's pi0 latency was quoted (the pi0 ``ref`` preset) (VLM 256 wide, 4 layers, 8 heads, 1 KV head,
    # head_dim 32, MLP 1024; SigLIP 128 wide, 2 layers, patch 16, 128 px; chunk 50, 16 tokens, dims 32), in
    # SmolVLA's shape (expert 0.75×, interleaved cross-attention, pixel shuffle 2 → 16 tokens per camera).
    "ref": SmolVLAConfig(
        image_size=128,
        patch_size=16,
        vision_width=128,
        vision_depth=2,
        vision_heads=4,
        vision_mlp=512,
        scale_factor=2,
        vocab_size=512,
        vlm_width=256,
        num_vlm_layers=4,
        num_heads=8,
        num_kv_heads=1,
        head_dim=32,
        vlm_mlp=1024,
        chunk_size=50,
        n_action_steps=50,
        max_state_dim=32,
        max_action_dim=32,
        state_dim=32,
        action_dim=32,
        tokenizer_max_length=16,
    ),
    # SmolVLA base (lerobot/smolvla_base): SmolVLM2-500M-Video-Instruct text model (960 wide, 15 heads,
    # 5 KV heads, head_dim 64, vocab 49 280) truncated to 16 layers; SigLIP 768 wide, 12 layers, patch 16,
    # 512 px, pixel shuffle 4 → 64 tokens per image; expert 720 wide (0.75×), MLP 2048.
    "full": SmolVLAConfig(
        image_size=512,
        patch_size=16,
        vision_width=768,
        vision_depth=12,
        vision_heads=12,
        vision_mlp=3072,
        scale_factor=4,
        vocab_size=49280,
        vlm_width=960,
        num_vlm_layers=16,
        num_heads=15,
        num_kv_heads=5,
        head_dim=64,
        vlm_mlp=2560,
        rms_eps=1e-5,
        chunk_size=50,
        n_action_steps=50,
        max_state_dim=32,
        max_action_dim=32,
        state_dim=6,
        action_dim=6,
        tokenizer_max_length=48,
        cameras=["camera1", "camera2", "camera3"],
    ),
}


def preset(name: str, **overrides: Any) -> SmolVLAConfig:
    """A copy of preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown SmolVLA preset {name!r}; valid: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)

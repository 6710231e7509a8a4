"""A preset that carries its own recipe (issue 13: wavenet-tuned, shared.config.PRESET_RECIPES):
its defaults reach `train`, `compare`, `diagnose` and a sweep's trials, a flag given overrides
one, and a trial's command spells the recipe out (numpy backend: always installed)."""
import json
import shlex

import pytest

from makemore import cli, sweep
from makemore import study as studies
from shared.config import PRESET_RECIPES, TrainConfig, preset_recipe
from shared.data import read_words
from shared.params import num_params
from shared.spec import get_spec

# the recipe the README's results table reports (written out here, not read from the code)
TUNED = {"steps": 200_000, "batch_size": 256, "optimizer": "adamw", "schedule": "cosine", "warmup": 1000,
         "lr_final": 1e-5}


def test_the_tuned_preset_is_the_lecture_model_with_its_own_recipe():
    spec, lecture = get_spec("wavenet-tuned"), get_spec("wavenet")
    assert num_params(spec) == 76_579 == num_params(lecture)          # the lecture's 76,579 (Part 5)
    assert spec.layers == lecture.layers and spec.name == "wavenet-tuned"
    r = preset_recipe("wavenet-tuned")
    assert {k: r[k] for k in TUNED} == TUNED and 0 < r["dropout"] < 1 and r["weight_decay"] > 0
    TrainConfig(**r)   # a valid config
    assert preset_recipe("wavenet") == {} and preset_recipe("mlp", steps=300) == {}
    assert set(PRESET_RECIPES) == {"wavenet-tuned", "wavenet-gated"}


# wavenet-gated's recipe as the README reports it (bench/results-beat/beat-1.950-gated-150k)
GATED = {"steps": 150_000, "batch_size": 256, "optimizer": "adamw", "schedule": "cosine", "warmup": 500,
         "lr_final": 1e-5, "weight_decay": 0.00057}


def test_the_gated_preset_carries_the_recipe_the_readme_reports():
    r = preset_recipe("wavenet-gated")
    assert {k: r[k] for k in GATED} == GATED
    assert round(r["lr"], 5) == 0.00317 and round(r["dropout"], 3) == 0.168 and "ema" not in r
    TrainConfig(**r)
    assert num_params(get_spec("wavenet-gated")) == 76_058 <= 76_600   # issue 13's budget
    assert preset_recipe("wavenet-gated", steps=300)["warmup"] == 1      # 500 of 150,000: 1 of 300


def test_a_shorter_run_of_the_recipe_keeps_its_warmup_share():
    r = preset_recipe("wavenet-tuned", steps=400)
    assert r["steps"] == 400 and r["warmup"] == 2          # 1,000 of 200,000 is 0.5%: 2 of 400
    assert preset_recipe("wavenet-tuned", steps=100_000)["warmup"] == 500
    assert preset_recipe("wavenet-tuned", steps=200_000)["warmup"] == 1000
    TrainConfig(**r)


@pytest.fixture
def tiny(tmp_path, names_path):
    path = tmp_path / "names.txt"      # 600 names: the split and the evaluation stay quick
    path.write_text("\n".join(read_words(names_path)[:600]) + "\n")
    return path


def _run_json(folder):
    return json.loads((folder / "run.json").read_text())


def test_train_takes_the_presets_recipe_and_a_flag_overrides_it(tmp_path, tiny):
    out = tmp_path / "tuned"
    base = ["train", "--backend", "numpy", "--preset", "wavenet-tuned", "--steps", "20", "--data", str(tiny),
            "--no-progress"]
    assert cli.main(base + ["--out", str(out)]) == 0
    cfg = _run_json(out)["config"]
    assert {k: cfg[k] for k in ("batch_size", "optimizer", "schedule", "lr_final")} == {
        "batch_size": 256, "optimizer": "adamw", "schedule": "cosine", "lr_final": 1e-5}
    assert cfg["steps"] == 20 and cfg["warmup"] == 0 and cfg["dropout"] > 0   # 0.5% of 20 rounds to 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["optimizer"] == "adamw" and m["batch_size"] == 256 and len(m["loss"]) == 20
    # flags given win; the rest stays the recipe's
    out2 = tmp_path / "override"
    assert cli.main(base + ["--out", str(out2), "--dropout", "0", "--batch-size", "64", "--warmup", "5"]) == 0
    cfg2 = _run_json(out2)["config"]
    assert (cfg2["dropout"], cfg2["batch_size"], cfg2["warmup"], cfg2["optimizer"]) == (0.0, 64, 5, "adamw")
    # the lecture's presets keep the lecture's recipe
    out3 = tmp_path / "lecture"
    assert cli.main(["train", "--backend", "numpy", "--preset", "mlp", "--steps", "5", "--data", str(tiny),
                     "--no-progress", "--out", str(out3)]) == 0
    cfg3 = _run_json(out3)["config"]
    assert (cfg3["optimizer"], cfg3["batch_size"], cfg3["lr"], cfg3["dropout"]) == ("sgd", 32, 0.1, 0.0)


def test_compare_and_diagnose_keep_their_own_steps_with_the_recipe():
    args = cli.build_parser().parse_args(["compare", "--preset", "wavenet-tuned", "--steps", "300"])
    cli._apply_recipe(args, ["compare", "--preset", "wavenet-tuned", "--steps", "300"])
    cfg = cli._config(args)
    assert (cfg.steps, cfg.warmup, cfg.batch_size, cfg.optimizer) == (300, 2, 256, "adamw")   # round(1.5)
    args = cli.build_parser().parse_args(["diagnose", "--preset", "wavenet-tuned"])
    cli._apply_recipe(args, ["diagnose", "--preset", "wavenet-tuned"])
    assert (args.steps, args.warmup, args.schedule) == (1000, 5, "cosine")   # diagnose's 1,000 steps


def test_a_study_on_the_tuned_preset_starts_from_its_recipe_and_its_command_spells_it_out():
    st = studies.parse(studies.tomllib.loads('name = "t"\nbackend = "numpy"\npreset = "wavenet-tuned"\n'
                                             '[fixed]\nsteps = 400\n[space]\nlr = { low = 0.001, high = 0.01 }\n'))
    s = st.settings({"lr": 0.004})
    assert (s["optimizer"], s["batch_size"], s["steps"], s["warmup"], s["lr"]) == ("adamw", 256, 400, 2, 0.004)
    assert s["lr_final"] == 1e-5     # the recipe's, not the lecture's lr / 10
    argv = sweep.train_argv(s, "numpy", "runs/x")
    for flag in ("--optimizer adamw", "--batch-size 256", "--schedule cosine", "--warmup 2"):
        assert flag in shlex.join(argv)
    args = cli.build_parser().parse_args(argv)
    cli._apply_recipe(args, argv)
    assert {k: getattr(args, k) for k in cli.RUN_DEFAULTS} == s

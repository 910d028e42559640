"""params.yaml is read through a typed schema that names the faulty field."""
import shutil
from pathlib import Path

import pytest
import yaml

from dice_core.config import ParamsError, load_params

PROJECT_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def write_params(tmp_path, mutate):
    raw = yaml.safe_load(PROJECT_PARAMS.read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_projects_params_file_is_valid():
    params = load_params(PROJECT_PARAMS)
    assert params.seed == 42
    assert "dice-xl" in params.static.models


def test_unknown_key_is_named_with_its_path(tmp_path):
    path = write_params(tmp_path, lambda raw: raw["static"].update(batchsize=4))
    with pytest.raises(ParamsError, match=r"static\.batchsize: Extra inputs are not permitted"):
        load_params(path)


def test_wrong_value_is_named_with_its_path(tmp_path):
    path = write_params(tmp_path, lambda raw: raw["static"].update(batch_size=0))
    with pytest.raises(ParamsError, match=r"static\.batch_size: .*greater than or equal to 1"):
        load_params(path)


def test_unknown_model_name_lists_the_valid_ones(tmp_path):
    path = write_params(tmp_path, lambda raw: raw["static"].update(models=["dice-huge"]))
    with pytest.raises(ParamsError, match=r"static\.models.*unknown model 'dice-huge'.*dice-xl"):
        load_params(path)


def test_a_key_missing_from_params_yaml_is_an_error_naming_it(tmp_path):
    path = write_params(tmp_path, lambda raw: raw["train"].pop("eval_every"))
    with pytest.raises(ParamsError, match=r"train\.eval_every.*[Ff]ield required"):
        load_params(path)


def test_params_yaml_is_the_one_place_a_value_is_chosen():
    """No schema field that params.yaml sets has a default of its own (which could differ)."""
    from pydantic import BaseModel

    from dice_core.config import Params

    def defaults(section: type, values: dict, path: str) -> list[str]:
        found = []
        for name, field in section.model_fields.items():
            if name in values and not field.is_required():
                found.append(path + name)
            kind = field.annotation
            if isinstance(kind, type) and issubclass(kind, BaseModel) and \
                    isinstance(values.get(name), dict):
                found += defaults(kind, values[name], f"{path}{name}.")
        return found
    assert defaults(Params, yaml.safe_load(PROJECT_PARAMS.read_text()), "") == []


# Settings training reads that cannot change a model or its run folder, so that DVC does not
# retrain for them: where and how often things are logged, the loader's processes, where Ray
# and the reference's source are, and what a resume may change (the changed values are tracked).
# A run's training seed is tracked as its own entry of train.runs (train.runs.${key}), not as
# train.seeds or the job's training_seed, so that adding a seed trains only the new runs.
TRAIN_STAGE_UNTRACKED = {
    "train.models", "train.seeds", "training_seed", "train.log_every", "train.loader_workers",
    "train.ray_address", "train.resume_changes", "evaluate.reference_split",
    "evaluate.reference_batch", "evaluate.output", "tracking"}


def test_the_train_stage_tracks_every_setting_of_the_training_job_but_the_cadence_ones():
    from dice_core.config import TrainingJob
    stage = yaml.safe_load((PROJECT_PARAMS.parent / "dvc.yaml").read_text())["stages"]["train"]
    listed = {key.replace(".${item.model}", "").replace(".${key}", "")
              for key in stage["do"]["params"]}
    expected = set()
    for section, field in TrainingJob.model_fields.items():
        inner = getattr(field.annotation, "model_fields", None)
        if inner is None or section in listed | TRAIN_STAGE_UNTRACKED:
            expected.add(section)
        else:
            expected |= {f"{section}.{name}" for name in inner}
    assert listed == expected - TRAIN_STAGE_UNTRACKED


def test_missing_or_broken_file_says_what_to_do(tmp_path):
    with pytest.raises(ParamsError, match="not found: run from the project root"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    shutil.copy(PROJECT_PARAMS, broken)
    broken.write_text(broken.read_text() + "\n  : : [\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)


def test_text_table_aligns_columns_to_the_widest_cell():
    from dice_core.text_table import format_table
    table = format_table(["model", "n"], [["a", "1"], ["longer", "12345"]]).splitlines()
    assert table[0] == "model       n"
    assert table[1] == "-" * len(table[0])
    assert table[2] == "a           1"
    assert table[3] == "longer  12345"


def test_every_model_needs_its_own_settings_entry_and_gets_them_laid_over_train(tmp_path):
    path = write_params(tmp_path, lambda raw: raw["train"]["per_model"].pop("dit-t"))
    with pytest.raises(ParamsError, match=r"per_model has no entry for dit-t: add dit-t: \{\}"):
        load_params(path)
    path = write_params(tmp_path, lambda raw: raw["train"]["per_model"]["dit-t"].update(
        lr=0.5, model_overrides={"depth": 2}))
    params = load_params(path)
    assert params.train.for_model("dit-t").lr == 0.5
    assert params.train.for_model("dit-t").model_overrides == {"depth": 2}
    assert params.train.for_model("dice-t") == params.train
    path = write_params(tmp_path, lambda raw: raw["train"]["per_model"]["dit-t"].update(steps=9))
    with pytest.raises(ParamsError, match=r"train\.per_model\.dit-t\.steps: Extra inputs"):
        load_params(path)


def test_a_profile_and_overrides_are_validated_and_keep_the_files_comments(tmp_path):
    from pipelines.settings import update_params
    path = tmp_path / "params.yaml"
    shutil.copy(PROJECT_PARAMS, path)
    assert update_params(path, None, ["train.steps=7", "train.per_model.dit-t.lr=0.25"])
    params = load_params(path)
    assert params.train.steps == 7 and params.train.for_model("dit-t").lr == 0.25
    assert "# the paper: 35000" in path.read_text()
    before = path.read_text()
    with pytest.raises(ParamsError, match=r"(?s)-S train\.stepz=1 does not match.*train\.stepz"):
        update_params(path, None, ["train.stepz=1"])
    with pytest.raises(ParamsError, match="is not KEY=VALUE"):
        update_params(path, None, ["train.steps"])
    assert path.read_text() == before
    assert not update_params(path, None, ["train.steps=7"])   # nothing to change


def test_the_imagenet_profile_is_the_papers_setting():
    from pipelines.settings import layered_params, validate
    params = validate(layered_params(PROJECT_PARAMS, "imagenet"), "imagenet profile")
    assert params.prepare.source == "imagenet" and params.prepare.resolution == 256
    assert params.train.models == ["dice-xl", "dit-xl-2", "dimr-xl-2r"]
    assert (params.train.steps, params.train.global_batch, params.train.lr) == (35000, 128, 1e-4)
    assert params.train.activation_checkpointing and params.train.precision == "auto"
    assert (params.train.eval_every, params.evaluate.samples, params.evaluate.steps) == \
        (5000, 500, 250)
    assert params.evaluate.feature_network == "inception" and params.seed == 42



def test_a_stage_command_imports_no_other_stage_and_help_lists_every_command():
    import subprocess
    import sys
    code = ("import sys; from pipelines.cli import build_parser; build_parser('prepare'); "
            "print(sorted(m for m in ('prefect', 'pipelines.flow', 'pipelines.report', "
            "'pipelines.train') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=120)
    assert loaded.stdout.strip() == "[]"      # Prefect is for `dice flow` alone
    usage = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"],
                           capture_output=True, text=True, check=True, timeout=120).stdout
    assert all(name in usage for name in ("static", "prepare", "train", "report", "flow",
                                          "tracking", "profile", "models"))

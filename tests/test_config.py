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

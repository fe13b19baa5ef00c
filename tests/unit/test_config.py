"""params.yaml parsing: frozen typed objects, unknown keys named, overrides merged."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from bertrec.config import Params, load_params, parse_override
from bertrec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_committed_params_yaml_equals_the_defaults():
    # params.yaml documents every default; the two must not drift apart
    assert load_params(ROOT / "params.yaml") == Params()


def test_every_section_of_params_yaml_has_a_comment():
    lines = (ROOT / "params.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith((" ", "#")):
            assert lines[i - 1].startswith("#"), f"section {line!r} has no comment above it"


def test_unknown_key_names_it_and_lists_valid_keys(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("split:\n  sed: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    message = str(caught.value)
    assert "unknown key 'split.sed'" in message
    assert "valid keys here: seed, ratio, cold_fraction" in message


def test_unknown_section_lists_the_sections(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'trian'; valid keys here: paths, data, split"):
        load_params(tmp_path / "absent.yaml", ["trian.lr=1"])


def test_overrides_merge_into_the_file_and_are_typed(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("split:\n  seed: 3\n  cold_fraction: 0.2\n")
    params = load_params(path, ["split.seed=7", "eval.ks=[5]", "data.min_rating=4"])
    assert params.split.seed == 7 and params.split.cold_fraction == 0.2
    assert params.eval.ks == (5,) and params.data.min_rating == 4.0


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"split.seed: .* \(got 'abc'\)"):
        load_params(tmp_path / "absent.yaml", ["split.seed=abc"])


def test_invalid_ratio_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="summing to 1"):
        load_params(tmp_path / "absent.yaml", ["split.ratio=[0.5, 0.1, 0.1]"])


def test_params_are_frozen():
    params = Params()
    with pytest.raises(pydantic.ValidationError):
        params.split.seed = 1  # type: ignore[misc]


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("split.seed")


def test_flat_view_for_tracking():
    flat = Params().flat()
    assert flat["split.seed"] == 2026 and flat["data.columns.user"] == "user_id"


def test_compute_defaults_to_local_and_checks_the_ray_address(tmp_path):
    params = load_params(tmp_path / "absent.yaml")
    assert params.compute.engine == "local" and params.compute.address == "auto"
    for address in ("auto", "local", "10.0.0.5:6379", "ray://head.bertrec.svc:10001"):
        assert load_params(tmp_path / "absent.yaml", [f"compute.address={address}"]).compute.address == address
    with pytest.raises(ConfigError, match=r"address 'http://head' is not auto, local, host:port or ray://host:port"):
        load_params(tmp_path / "absent.yaml", ["compute.address=http://head"])
    with pytest.raises(ConfigError, match=r"compute.workers: Input should be greater than or equal to 1"):
        load_params(tmp_path / "absent.yaml", ["compute.workers=0"])

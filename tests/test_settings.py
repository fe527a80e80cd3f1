"""Server settings: defaults < TOML file < environment < flags, with typed parsing and clear errors."""

from __future__ import annotations

import argparse

import pytest

from compressor.service.settings import Settings, add_arguments, resolve


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return resolve(parser.parse_args(argv), environ or {})


def test_precedence_defaults_file_environment_flags(tmp_path):
    config = tmp_path / "focal.toml"
    config.write_text('port = 6000\nmax_batch = 3\nquantize = "int8"\ncompile = true\nprefix_cache_mb = 64\n')
    settings = parse(["--config", str(config), "--max-batch", "5"],
                     {"FOCAL_PORT": "7000", "FOCAL_COMPILE": "false", "FOCAL_PREFIX_CACHE_MB": "0"})
    assert settings.port == 7000 and settings.max_batch == 5 and settings.quantize == "int8"
    assert settings.compile is False and settings.prefix_cache_mb == 0
    assert settings.metrics_port == Settings().metrics_port


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("On", True), ("1", True), ("no", False), ("0", False)])
def test_booleans_are_spelled_as_people_spell_them(raw, value):
    assert parse([], {"FOCAL_COMPILE": raw}).compile is value
    assert parse(["--compile", raw]).compile is value


def test_bad_values_are_named():
    with pytest.raises(ValueError, match="FOCAL_COMPILE='maybe' is not a valid bool"):
        parse([], {"FOCAL_COMPILE": "maybe"})
    with pytest.raises(ValueError, match="FOCAL_PORT='http' is not a valid int"):
        parse([], {"FOCAL_PORT": "http"})


def test_unknown_keys_in_the_file_are_refused(tmp_path):
    config = tmp_path / "focal.toml"
    config.write_text("port = 1\ncompiled = true\n")
    with pytest.raises(ValueError, match="unknown settings compiled"):
        parse(["--config", str(config)])

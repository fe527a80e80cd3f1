"""Server settings: defaults < TOML file < environment < flags, with typed parsing and clear errors."""

from __future__ import annotations

import argparse
import re

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


def test_a_wrong_type_in_the_file_names_the_file_line_and_setting(tmp_path):
    config = tmp_path / "focal.toml"
    config.write_text('# settings\nmax_batch = 4\n\nport = "abc"\n')
    with pytest.raises(ValueError, match=rf"{config}:4: port must be a TOML integer, got 'abc'"):
        parse(["--config", str(config)])
    config.write_text("drain_seconds = 5\ncompile = 1\n")  # an integer for a float is fine, for a boolean not
    with pytest.raises(ValueError, match=r"focal.toml:2: compile must be a TOML boolean"):
        parse(["--config", str(config)])
    config.write_text("port = [1\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        parse(["--config", str(config)])


@pytest.mark.parametrize(("argv", "environ", "message"), [
    (["--log-level", "TRACE"], {}, "log_level: 'TRACE' is not one of"),
    ([], {"FOCAL_LOG_LEVEL": "verbose"}, "log_level: 'verbose' is not one of"),
    (["--model", "/nonexistent/model.gguf"], {}, "model: /nonexistent/model.gguf does not exist"),
    (["--auth-token-file", "/nonexistent/token"], {}, "auth_token_file: cannot read /nonexistent/token"),
    (["--auth-token", "   "], {}, "auth_token: is only whitespace"),
    (["--index-type", "annoy"], {}, "index_type: 'annoy' is not one of"),
    (["--device", "tpu"], {}, "device: 'tpu' is not auto, cpu, cuda or cuda:N"),
    (["--max-batch", "0"], {}, "max_batch: 0 is below its minimum of 1"),
    (["--port", "70000"], {}, "port: 70000 is not a port"),
    (["--tls-cert", __file__], {}, "tls_cert and tls_key: give both"),
])
def test_bad_settings_are_refused_before_anything_loads(argv, environ, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(argv, environ)


def test_an_empty_token_file_fails_closed(tmp_path):
    token = tmp_path / "token"
    token.write_text(" \n")
    with pytest.raises(ValueError, match="is empty"):
        parse(["--auth-token-file", str(token)])
    token.write_text("s3cret\n")
    assert parse(["--auth-token-file", str(token)]).token() == "s3cret"

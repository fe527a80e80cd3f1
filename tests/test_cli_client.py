"""The client commands of the command line against a real server on loopback: ``focal call`` takes
``focal compress``'s inputs, one token flag and variable everywhere, ``focal index`` lists only its
own flags, bad input is a sentence (never a traceback), a closed pipe ends quietly, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_service import SAMPLE, Running

from compressor.cli import main

QUESTION = SAMPLE["question"]


@pytest.fixture(scope="module")
def secured(engine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    (folder / "token").write_text("s3cret\n")
    running = Running(engine, auth_token_file=str(folder / "token"), data_dir=str(folder / "data"))
    yield running
    running.server.drain()


@pytest.fixture()
def chunk_file(tmp_path):
    path = tmp_path / "chunks.jsonl"
    path.write_text("".join(json.dumps({"id": c["title"], "text": c["text"]}) + "\n" for c in SAMPLE["chunks"]))
    return path


def test_call_takes_compress_inputs_and_flags(secured, chunk_file, capsys, monkeypatch):
    monkeypatch.setenv("FOCAL_TOKEN", "s3cret")
    code = main(["call", str(chunk_file), "--query", QUESTION, "--target", secured.target, "--target-tokens", "120",
                 "--reorder", "relevance", "--json"])
    out = capsys.readouterr().out
    assert code == 0
    reply = json.loads(out)
    assert "15 minutes" in reply["prompt"] and int(reply["usage"]["compressed_tokens"]) <= 120
    assert [c["id"] for c in reply["chunks"]] == [c["title"] for c in SAMPLE["chunks"]]


def test_one_token_flag_and_variable_for_every_client_command(secured, capsys, monkeypatch):
    monkeypatch.delenv("FOCAL_TOKEN", raising=False)
    assert main(["index", "stats", "--target", secured.target]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main(["index", "stats", "--target", secured.target, "--token", "s3cret"]) == 0
    capsys.readouterr()
    monkeypatch.setenv("FOCAL_TOKEN", "s3cret")
    assert main(["index", "add", str(_write(secured, "note.txt", "The canary runs for 15 minutes.")),
                 "--target", secured.target, "--namespace", "cli"]) == 0
    capsys.readouterr()
    assert main(["index", "search", "How long does the canary run?", "--target", secured.target,
                 "--namespace", "cli"]) == 0
    assert "15 minutes" in capsys.readouterr().out


def _write(running: Running, name: str, text: str) -> Path:
    path = Path(running.settings.data_dir).parent / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("arguments", "sentence"), [
    (["call", "missing.jsonl", "--query", "q"], "missing.jsonl"),
    (["call", "{chunks}"], "--query: is required when the inputs are chunks"),
    (["call", "{bad}", "--query", "q"], "not valid JSON"),
    (["compress", "{bad}", "--query", "q"], "not valid JSON"),
    (["call", "{chunks}", "--query", "q", "--method", "token", "--adaptive"], "adaptive budget works with"),
])
def test_bad_input_is_a_sentence_and_exit_2(arguments, sentence, chunk_file, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n')
    argv = [a.format(chunks=chunk_file, bad=bad) for a in arguments]
    code = main([*argv, "--target", "127.0.0.1:1"] if argv[0] == "call" else argv)  # nothing listens there
    err = capsys.readouterr().err
    assert code == 2 and sentence in err and "Traceback" not in err


def test_index_lists_only_its_own_flags():
    done = subprocess.run([sys.executable, "-m", "compressor", "index", "stats", "--help"], capture_output=True,
                          text=True, check=True)
    for own in ("--data-dir", "--target", "--token", "--embedder", "--index-type"):
        assert own in done.stdout
    for servers in ("--port", "--max-batch", "--queue-depth", "--tls-cert", "--compile"):
        assert servers not in done.stdout
    top = subprocess.run([sys.executable, "-m", "compressor", "--help"], capture_output=True, text=True, check=True)
    assert "``" not in top.stdout


def test_a_closed_pipe_ends_quietly_and_client_commands_need_no_torch(secured, tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question": QUESTION, "chunks": SAMPLE["chunks"]}) + "\n"
                                 for _ in range(6)))
    script = ("import sys; from compressor.cli import main; code = main(sys.argv[1:]); "
              "sys.stderr.write(f'torch imported: {\"torch\" in sys.modules}\\n'); sys.exit(code)")
    process = subprocess.Popen([sys.executable, "-c", script, "call", str(questions), "--rate", "0.5", "--target",
                                secured.target, "--token", "s3cret"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    process.stdout.readline()
    process.stdout.close()  # the reader goes away, as `focal call ... | head -1` does
    err = process.stderr.read()
    assert process.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert "torch imported: False" in err

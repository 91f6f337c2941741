"""``fp4 study``: the corpus loader, the split by document, the packed file, and the quick study end to end."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import zipfile

import pytest
import torch
from fp4 import corpus as corpora
from fp4 import study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _docs(n: int) -> list[corpora.Document]:
    return [corpora.Document(f"dir/doc{i:03d}.txt", f"text of document {i}\n".encode()) for i in range(n)]


def test_split_is_by_document_disjoint_and_deterministic():
    documents = _docs(200)
    train, valid = corpora.split_documents(documents, 0.1)
    train_ids, valid_ids = {d.id for d in train}, {d.id for d in valid}
    assert not train_ids & valid_ids and train_ids | valid_ids == {d.id for d in documents}
    assert 5 <= len(valid_ids) <= 40  # about 10 % of 200
    # The side of a document depends on its id alone: not on the order, the other documents or the contents.
    shuffled = documents[:]
    random.Random(1).shuffle(shuffled)
    assert corpora.split_documents(shuffled, 0.1) == (train, valid)
    _, valid_of_half = corpora.split_documents(documents[:100], 0.1)
    assert {d.id for d in valid_of_half} == {i for i in valid_ids if i < "dir/doc100"}
    changed = [corpora.Document(d.id, d.data * 3) for d in documents]
    assert {d.id for d in corpora.split_documents(changed, 0.1)[1]} == valid_ids
    assert all((corpora.heldout_score(i) < 0.1) == (i in valid_ids) for i in train_ids | valid_ids)
    # Another salt, another split.
    assert {d.id for d in corpora.split_documents(documents, 0.1, salt="other")[1]} != valid_ids


def test_split_keeps_both_sides_non_empty():
    train, valid = corpora.split_documents(_docs(3), 0.001)
    assert len(valid) == 1 and len(train) == 2
    with pytest.raises(ValueError, match="at least 2 documents"):
        corpora.split_documents(_docs(1), 0.5)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        corpora.split_documents(_docs(5), 1.0)


def test_user_files_directories_and_separator(tmp_path):
    books = tmp_path / "books"
    (books / "sub").mkdir(parents=True)
    (books / "a.txt").write_text("first book")
    (books / "sub" / "b.md").write_text("second book")
    (books / "image.png").write_bytes(b"\x89PNG not text")  # not a text pattern: left out
    single = tmp_path / "letters.txt"
    single.write_text("dear a\n\n===\n\ndear b\n===\n   \n===\ndear c")
    corpus = corpora.read_paths([books, single])
    assert [d.id for d in corpus.documents] == ["books/a.txt", "books/sub/b.md", "letters.txt"]
    assert corpus.documents[1].data == b"second book"
    cut = corpora.read_paths([single], separator="===")
    assert [d.id for d in cut.documents] == ["letters.txt#0", "letters.txt#1", "letters.txt#3"]  # #2 is blank
    assert cut.documents[2].text == "\ndear c"
    assert cut.sources[0]["separator"] == "==="
    with pytest.raises(FileNotFoundError):
        corpora.read_paths([tmp_path / "missing"])
    other = tmp_path / "other" / "books"
    other.mkdir(parents=True)
    (other / "a.txt").write_text("a different first book")
    with pytest.raises(ValueError, match="same id 'books/a.txt'"):
        corpora.read_paths([books, other])


def test_corpus_hash_covers_ids_and_bytes():
    documents = _docs(4)
    digest = corpora.documents_sha256(documents)
    assert digest == corpora.documents_sha256(list(reversed(documents)))
    assert digest != corpora.documents_sha256([*documents[:3], corpora.Document(documents[3].id, b"other")])
    assert digest != corpora.documents_sha256([*documents[:3], corpora.Document("dir/renamed", documents[3].data)])


def test_debian_source_takes_the_newest_installed_package(tmp_path):
    for version in ("3.9", "3.11"):
        sources = tmp_path / f"python{version}" / "html" / "_sources"
        (sources / "library").mkdir(parents=True)
        (sources / "library" / "os.rst.txt").write_text(f"os in {version}")
        (sources / "translations").mkdir()
        (sources / "translations" / "x.rst.txt").write_text("left out")
    source = corpora.DebianDocs(
        "test-docs", "python*-doc", str(tmp_path / "python*/html/_sources"), "PSF-2.0", exclude=("translations/*",)
    )
    assert source.find() == ("python3.11-doc", tmp_path / "python3.11" / "html" / "_sources")
    loaded = source.load()
    assert [(d.id, d.text) for d in loaded.documents] == [("library/os.rst.txt", "os in 3.11")]
    assert loaded.sources[0]["package"] == "python3.11-doc" and loaded.sources[0]["license"] == "PSF-2.0"
    missing = corpora.DebianDocs("none", "none-*", str(tmp_path / "none-*/_sources"), "x")
    with pytest.raises(corpora.CorpusUnavailable, match="Debian package none-"):
        missing.load()


def test_excerpt_is_the_python_tutorial_with_its_license():
    excerpt = corpora.excerpt()
    assert len(excerpt.documents) == 17 and all(d.id.startswith("tutorial/") for d in excerpt.documents)
    assert excerpt.n_bytes > 200_000
    assert "Python" in excerpt.documents[0].text
    assert excerpt.sources[0]["license"] == "PSF-2.0" and excerpt.sources[0]["package"] == "python3.11-doc"


def test_pack_is_reproducible_and_decodes_to_the_documents(tmp_path):
    pytest.importorskip("tokenizers")
    excerpt = corpora.excerpt()
    first = corpora.prepare(excerpt, vocab_size=400, valid_fraction=0.2)
    second = corpora.prepare(excerpt, vocab_size=400, valid_fraction=0.2)
    assert first.meta == second.meta and torch.equal(first.train, second.train)
    digest = corpora.write_pack(first, tmp_path / "a.fp4pack")
    assert corpora.write_pack(second, tmp_path / "b.fp4pack") == digest  # the same bytes
    loaded = corpora.load_pack(tmp_path / "a.fp4pack")
    assert torch.equal(loaded.train, first.train) and torch.equal(loaded.valid, first.valid)
    assert loaded.vocab_size == 400 and loaded.file_sha256 == digest
    meta = loaded.meta
    assert meta["corpus"]["sha256"] == excerpt.sha256()
    assert not set(meta["split"]["train"]["documents"]) & set(meta["split"]["valid"]["documents"])
    assert sum(meta["split"]["valid"]["tokens_per_document"]) == loaded.valid.numel()
    # The held-out stream is the held-out documents, each closed by the end-of-text token, and nothing else.
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(loaded.tokenizer_json)
    eot = meta["tokenizer"]["end_of_text_id"]
    pieces, start = [], 0
    for length in meta["split"]["valid"]["tokens_per_document"]:
        ids = loaded.valid[start : start + length].tolist()
        assert ids[-1] == eot and eot not in ids[:-1]
        pieces.append(tokenizer.decode(ids[:-1]))
        start += length
    texts = {d.id: d.text for d in excerpt.documents}
    assert pieces == [texts[i] for i in meta["split"]["valid"]["documents"]]
    # A changed token is caught by the recorded hash.
    with zipfile.ZipFile(tmp_path / "a.fp4pack") as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    entries["valid.u16"] = bytes([entries["valid.u16"][0] ^ 1]) + entries["valid.u16"][1:]
    with zipfile.ZipFile(tmp_path / "bad.fp4pack", "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match="valid tokens do not match"):
        corpora.load_pack(tmp_path / "bad.fp4pack")


def test_precisions_parse_and_refuse():
    assert study.Precision.parse("bf16") == study.Precision("bf16", "bf16", None)
    assert study.Precision.parse("fp4") == study.Precision("fp4", "fp4", None)
    assert study.Precision.parse("fp4:quartet2") == study.Precision("fp4:quartet2", "fp4", "quartet2")
    for bad in ("fp8", "bf16:x", "fp4:", ""):
        with pytest.raises(ValueError, match="expected bf16, fp4 or fp4:<recipe>"):
            study.Precision.parse(bad)


def test_schedule_data_order_and_parameter_count():
    assert study.lr_at(0, 100, 1.0) == pytest.approx(0.1)  # warm-up: 10 steps
    assert study.lr_at(9, 100, 1.0) == pytest.approx(1.0)
    assert study.lr_at(99, 100, 1.0) == pytest.approx(0.1, abs=1e-3)  # cosine down to 10 % of the peak
    assert all(study.lr_at(s, 100, 1.0) >= study.lr_at(s + 1, 100, 1.0) for s in range(10, 99))
    stream = torch.arange(1001)
    order = study.train_order(stream, seq_len=10, batch=4, steps=50, seed=3)  # 100 windows: two epochs
    assert order.shape == (50, 4)
    assert sorted(order.flatten()[:100].tolist()) == list(range(0, 1000, 10))  # every window once an epoch
    assert torch.equal(order, study.train_order(stream, 10, 4, 50, seed=3))
    assert not torch.equal(order, study.train_order(stream, 10, 4, 50, seed=4))
    inputs, targets = study.gather(stream, order[0], 10)
    assert torch.equal(inputs[:, 1:], targets[:, :-1]) and inputs.shape == (4, 10)
    # Non-embedding parameters as Quartet counts them; its 30M shape.
    for size in (study.SIZES["tiny-s"], study.SIZES["q30m"]):
        model = study._build_model(size, vocab_size=300, seq_len=64)
        total = sum(p.numel() for p in model.parameters())
        embedding = model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
        assert size.non_embedding_params() == total - embedding
    assert 30.0e6 < study.SIZES["q30m"].non_embedding_params() < 31.0e6


def test_row_command_replaces_sizes_precisions_and_out():
    argv = ["--pack", "c.fp4pack", "--sizes=tiny-s,tiny-m", "--precisions", "bf16,fp4,fp4:nvfp4", "--out", "x"]
    assert study.row_command(argv, "tiny-m", "fp4:nvfp4") == (
        "fp4 study --pack c.fp4pack --sizes tiny-m --precisions bf16,fp4:nvfp4 --out study-tiny-m"
    )


def test_cli_refuses_unknown_size_and_precision(capsys):
    from fp4 import cli

    for args, message in ((["--sizes", "huge"], "unknown size 'huge'"), (["--precisions", "fp8"], "precision 'fp8'")):
        with pytest.raises(SystemExit) as stop:
            cli.main(["study", "--quick", *args])
        assert stop.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_quick_study_writes_sane_outputs(tmp_path):
    pytest.importorskip("tokenizers")
    out = tmp_path / "quick"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "study.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    table = (out / "results.md").read_text()
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The corpus: the shipped excerpt, named, versioned and hashed; split by document, as the split function says.
    excerpt = corpora.excerpt()
    assert data["data"]["corpus"]["sha256"] == excerpt.sha256()
    assert data["data"]["corpus"]["sources"][0]["version"] == "3.11.2-6+deb12u9"
    _, valid = corpora.split_documents(excerpt.documents, 0.2)
    assert data["data"]["split"]["valid_documents"] == [d.id for d in valid]
    assert data["data"]["pack"]["sha256"] == corpora.file_sha256(out / "corpus.fp4pack")
    assert excerpt.sha256() in table and data["machine"]["card"] in table
    # Every size with every precision: finite losses, a gap for fp4, a command that reproduces the row.
    runs = {(r["size"], r["precision"]): r for r in data["runs"]}
    assert set(runs) == {(s, p) for s in ("quick-a", "quick-b") for p in ("bf16", "fp4")}
    for (size, precision), run in runs.items():
        assert run["error"] is None
        assert math.isfinite(run["heldout_loss"]) and 3.0 < run["heldout_loss"] < 7.0  # vocabulary 512: ln 512 = 6.2
        assert all(math.isfinite(point[2]) for point in run["train_curve"]) and len(run["train_curve"]) == run["steps"]
        assert run["heldout_curve"][-1][2] == run["heldout_loss"] and run["tokens_per_second"] > 0
        row = next(line for line in table.splitlines() if line.startswith(f"| {size} ") and f"| {precision} |" in line)
        assert f"--sizes {size}" in row and "--precisions bf16" in row
    assert study.gaps(data)[("quick-a", "fp4")] is not None
    assert data["command"].endswith(f"fp4 study --quick --out {out}")  # after FP4_AUTOTUNE=... when set
    assert "Quartet" in table and "+2.8 %" in table
    # Same data order and initial weights: the first training loss agrees across precisions to bf16 rounding.
    for size in ("quick-a", "quick-b"):
        first = [runs[(size, p)]["train_curve"][0][2] for p in ("bf16", "fp4")]
        assert abs(first[0] - first[1]) < 0.05, first
    # A run whose training loss went non-finite says so, from which step, and shows no gap.
    broken = json.loads(json.dumps(data))
    run = next(r for r in broken["runs"] if (r["size"], r["precision"]) == ("quick-a", "fp4"))
    for point in run["train_curve"][3:]:
        point[2] = float("nan")
    run["heldout_loss"] = float("nan")
    table = study.markdown(broken)
    row = next(line for line in table.splitlines() if line.startswith("| quick-a ") and "| fp4 |" in line)
    assert "nan (training loss not finite from step 4)" in row and "%" not in row
    assert f"quick-a fp4: the training loss is not finite from step 4 of {run['steps']} on" in table


def test_a_diverging_run_stops_at_its_next_evaluation_and_says_so(tmp_path):
    """A learning rate that overflows the weights: each run stops at the first held-out evaluation after its
    training loss went non-finite (no GPU time spent on NaN), keeps its curve so far, and the table says so."""
    pytest.importorskip("tokenizers")
    out = tmp_path / "diverged"
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "examples", "study.py"), "--quick", "--lr", "1e30", "--out", str(out)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    table = (out / "results.md").read_text()
    for run in data["runs"]:
        first = study.nonfinite_step(run)
        assert first is not None and run["error"] is None
        evaluations = study.evaluation_steps(run["steps"], data["config"]["evals"])
        stopped = next(e + 1 for e in evaluations if e + 1 >= first)
        assert len(run["train_curve"]) == stopped < run["steps"] and run["train_tokens"] == stopped * 4 * 32
        assert math.isnan(run["heldout_loss"]) and run["heldout_curve"][-1][0] == stopped
        assert f"{run['size']} {run['precision']}: the training loss is not finite from step {first}" in table


def test_excerpt_is_package_data():
    """A wheel carries the excerpt: every file of it matches a package-data pattern of pyproject.toml."""
    import ast
    import fnmatch
    import re
    from pathlib import Path

    with open(os.path.join(REPO, "pyproject.toml")) as handle:
        text = handle.read()
    section = text.split("[tool.setuptools.package-data]", 1)[1]
    patterns = ast.literal_eval(re.search(r"^fp4 = (\[.*\])$", section, re.M).group(1))
    root = Path(REPO) / "compiler"
    files = [p.relative_to(root).as_posix() for p in (root / corpora.EXCERPT_DIR).rglob("*") if p.is_file()]
    assert len(files) == 19  # 17 pages, SOURCE.json, LICENSE.txt
    assert all(any(fnmatch.fnmatch(f, pattern) and f.count("/") == pattern.count("/") for pattern in patterns)
               for f in files)  # fmt: skip

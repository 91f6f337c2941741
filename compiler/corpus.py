"""Text corpora for ``fp4 study``: documents, a held-out split by document, a tokenizer, a packed file.

A corpus is a list of documents, each a stable id and the exact bytes read.
Documents come from an installed Debian documentation package (``SOURCES``:
the reStructuredText sources of the Python documentation, of the Linux
kernel documentation), from the excerpt of the Python documentation shipped
in the package (for ``--quick``), or from a user's own files and directories
(one document per file, or pieces of a file cut at a separator).

The split is by document and by hash: a document is held out when the
SHA-256 of ``"<salt>:<document id>"``, read as a fraction of 2**64, falls
below the held-out fraction.  Whole documents go to one side; the result does
not depend on the order in which files were found, on their sizes, or on the
token stream.

``prepare`` trains a byte-level BPE tokenizer (``tokenizers``) on the
training split only, encodes both splits (each document followed by the
end-of-text token) and writes one ``.fp4pack`` file: a zip of ``meta.json``
(corpus names, versions, licenses, SHA-256 of the bytes used, the split, the
tokenizer's hash), ``tokenizer.json`` and the two token streams as
little-endian uint16.  ``load_pack`` reads it back anywhere, without network
and without ``tokenizers``.
"""

from __future__ import annotations

import fnmatch
import glob
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

END_OF_TEXT = "<|endoftext|>"
DEFAULT_SALT = "fp4-study"
DEFAULT_PATTERNS = ("*.txt", "*.md", "*.rst")
DEFAULT_CORPUS = ("python-docs", "linux-docs")
PACK_FORMAT = "fp4pack-1"
EXCERPT_DIR = "data/python-docs-excerpt"

if sys.byteorder != "little":  # the packed streams are read and written as native uint16
    raise ImportError("fp4.corpus reads and writes little-endian token files; this machine is big-endian")


@dataclass(frozen=True)
class Document:
    id: str
    data: bytes

    @property
    def text(self) -> str:
        # Bytes that are not UTF-8 become U+FFFD; the hash is over the bytes as read.
        return self.data.decode("utf-8", errors="replace")


@dataclass
class Corpus:
    """Documents plus where they came from (one record per source: name, package, version, license)."""

    documents: list[Document]
    sources: list[dict]

    @property
    def name(self) -> str:
        return "+".join(source["name"] for source in self.sources)

    @property
    def n_bytes(self) -> int:
        return sum(len(doc.data) for doc in self.documents)

    def sha256(self) -> str:
        return documents_sha256(self.documents)


def documents_sha256(documents: list[Document]) -> str:
    """SHA-256 over the documents in id order, each as ``<id> NUL <byte count> NUL <bytes>``."""
    digest = hashlib.sha256()
    for doc in sorted(documents, key=lambda d: d.id):
        digest.update(doc.id.encode("utf-8") + b"\0" + str(len(doc.data)).encode() + b"\0")
        digest.update(doc.data)
    return digest.hexdigest()


# ----------------------------------------------------------------------------
# sources


@dataclass(frozen=True)
class DebianDocs:
    """The reStructuredText sources that a Debian documentation package installs (Sphinx's ``_sources``)."""

    name: str
    package_glob: str  # e.g. python3.*-doc; the newest installed one is used
    sources_glob: str  # the _sources directory, with the same wildcard (a version: digits and dots)
    license: str
    exclude: tuple[str, ...] = ()
    description: str = ""

    def find(self) -> tuple[str, Path] | None:
        """(package name, _sources directory) of the newest installed package, or None."""
        found = []
        for directory in glob.glob(self.sources_glob):
            match = re.fullmatch(re.escape(self.sources_glob).replace(r"\*", r"([0-9][0-9.]*)"), directory)
            if match and os.path.isdir(directory):
                found.append((_version_key(match.group(1)), match.group(1), Path(directory)))
        if not found:
            return None
        _, version, directory = max(found)
        return self.package_glob.replace("*", version), directory

    def load(self) -> Corpus:
        located = self.find()
        if located is None:
            raise CorpusUnavailable(
                f"corpus {self.name!r} needs the Debian package {self.package_glob} (its files {self.sources_glob}); "
                f"install it (apt-get install {self.package_glob.replace('*', '<version>')}) or give --data PATH"
            )
        package, directory = located
        documents = [
            doc for doc in read_directory(directory, patterns=("*.rst.txt",), prefix="")
            if not any(fnmatch.fnmatch(doc.id, pattern) for pattern in self.exclude)
        ]  # fmt: skip
        source = {
            "name": self.name, "kind": "debian", "package": package, "version": debian_version(package),
            "license": self.license, "path": str(directory), "description": self.description,
        }  # fmt: skip
        return Corpus(documents, [source])


class CorpusUnavailable(RuntimeError):
    """The corpus asked for is not installed here."""


def _version_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"[.\-]", text))


def debian_version(package: str) -> str:
    """The installed version of a Debian package: dpkg-query, else the first line of its Debian changelog."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, timeout=30
        )
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    changelog = Path("/usr/share/doc") / package / "changelog.Debian.gz"
    if changelog.exists():
        with gzip.open(changelog, "rt", encoding="utf-8", errors="replace") as lines:
            match = re.match(r"\S+ \(([^)]+)\)", lines.readline())
            if match:
                return match.group(1)
    return "unknown"


SOURCES = {
    "python-docs": DebianDocs(
        name="python-docs",
        package_glob="python3.*-doc",
        sources_glob="/usr/share/doc/python3.*/html/_sources",
        license="PSF-2.0",
        description="The Python documentation (tutorial, library and language reference, HOWTOs, FAQs, "
        "what's new) as reStructuredText, one document per page",
    ),
    "linux-docs": DebianDocs(
        name="linux-docs",
        package_glob="linux-doc-*",
        sources_glob="/usr/share/doc/linux-doc-*/html/_sources",
        license="GPL-2.0-only (most files; see the package's copyright file)",
        exclude=("translations/*",),
        description="The Linux kernel documentation as reStructuredText, English pages only, one document per page",
    ),
}


def excerpt() -> Corpus:
    """A few pages of the Python documentation shipped in this package (PSF-2.0), for ``--quick`` and CI."""
    root = resources.files("fp4").joinpath(EXCERPT_DIR)
    meta = json.loads(root.joinpath("SOURCE.json").read_text(encoding="utf-8"))
    documents = []
    for name in sorted(meta["files"]):
        documents.append(Document(name, root.joinpath(*name.split("/")).read_bytes()))
    source = {
        "name": "python-docs-excerpt", "kind": "excerpt", "package": meta["package"], "version": meta["version"],
        "license": meta["license"], "path": f"fp4/{EXCERPT_DIR}",
        "description": f"{len(documents)} pages of the Python documentation, copied from {meta['package']} "
        f"{meta['version']}",
    }  # fmt: skip
    return Corpus(documents, [source])


def read_directory(root: str | os.PathLike, patterns=DEFAULT_PATTERNS, prefix: str | None = None) -> list[Document]:
    """Every file under ``root`` whose name matches one of ``patterns``; ids are paths relative to root."""
    root = Path(root)
    prefix = f"{root.name}/" if prefix is None else prefix
    documents = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns):
            documents.append(Document(prefix + path.relative_to(root).as_posix(), path.read_bytes()))
    return documents


def read_paths(paths, separator: str | None = None, patterns=DEFAULT_PATTERNS) -> Corpus:
    """A user's files and directories: one document per file, or pieces of each file cut at ``separator``.

    A directory contributes every matching file below it (id ``<directory name>/<relative path>``), a
    file itself (id: its name).  With a separator, piece k of a file has id ``<file id>#<k>``; empty
    pieces (only whitespace) are dropped.
    """
    documents: list[Document] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = read_directory(path, patterns)
        elif path.is_file():
            found = [Document(path.name, path.read_bytes())]
        else:
            raise FileNotFoundError(f"--data {path}: no such file or directory")
        if not found:
            raise ValueError(f"--data {path}: no files matching {', '.join(patterns)}")
        documents.extend(found)
    if separator:
        cut = separator.encode("utf-8")
        pieces = []
        for doc in documents:
            for k, piece in enumerate(doc.data.split(cut)):
                if piece.strip():
                    pieces.append(Document(f"{doc.id}#{k}", piece))
        documents = pieces
    ids = [doc.id for doc in documents]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if duplicates:
        raise ValueError(f"two documents have the same id {duplicates[0]!r}: give directories with different names")
    source = {
        "name": "user-data", "kind": "files", "package": None, "version": None, "license": "the user's",
        "path": [str(p) for p in paths], "separator": separator, "description": "files given with --data",
    }  # fmt: skip
    return Corpus(documents, [source])


def load_corpus(names: list[str] | None = None, paths=None, separator: str | None = None) -> Corpus:
    """The corpus of ``--data PATH ...`` if given, else of the named sources (``SOURCES`` or ``excerpt``)."""
    if paths:
        return read_paths(paths, separator)
    corpora = []
    for name in names or list(DEFAULT_CORPUS):
        if name == "python-docs-excerpt":
            corpora.append(excerpt())
        elif name in SOURCES:
            corpora.append(SOURCES[name].load())
        else:
            raise ValueError(f"unknown corpus {name!r}; known: {', '.join([*SOURCES, 'python-docs-excerpt'])}")
    if len(corpora) == 1:
        return corpora[0]
    documents = [Document(f"{c.sources[0]['name']}/{d.id}", d.data) for c in corpora for d in c.documents]
    return Corpus(documents, [c.sources[0] for c in corpora])


# ----------------------------------------------------------------------------
# the held-out split


def heldout_score(doc_id: str, salt: str = DEFAULT_SALT) -> float:
    """A document's place in [0, 1): the first 8 bytes of SHA-256("<salt>:<id>") over 2**64."""
    digest = hashlib.sha256(f"{salt}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_documents(
    documents: list[Document], valid_fraction: float = 0.05, salt: str = DEFAULT_SALT
) -> tuple[list[Document], list[Document]]:
    """(train, valid), each in id order.  A document is held out iff its score is below ``valid_fraction``.

    Where no document (or every document) scores below the fraction, the lowest-scoring one alone is
    held out, so that both sides are non-empty; the rule still depends on the ids alone.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {valid_fraction}")
    if len(documents) < 2:
        raise ValueError(f"a split by document needs at least 2 documents, got {len(documents)}")
    scored = sorted(documents, key=lambda d: (heldout_score(d.id, salt), d.id))
    valid_ids = {d.id for d in scored if heldout_score(d.id, salt) < valid_fraction}
    if not valid_ids or len(valid_ids) == len(documents):
        valid_ids = {scored[0].id}
    ordered = sorted(documents, key=lambda d: d.id)
    return [d for d in ordered if d.id not in valid_ids], [d for d in ordered if d.id in valid_ids]


# ----------------------------------------------------------------------------
# tokenizer


def train_tokenizer(documents: list[Document], vocab_size: int):
    """A byte-level BPE tokenizer (``tokenizers``) trained on ``documents``; id 0 is the end-of-text token.

    Byte-level: every byte sequence encodes (no unknown token) and decodes back exactly.  Training is
    deterministic for the same documents and vocabulary size (checked in the tests).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[END_OF_TEXT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )  # fmt: skip
    tokenizer.train_from_iterator([doc.text for doc in documents], trainer)
    return tokenizer


def encode(tokenizer, documents: list[Document]) -> tuple[torch.Tensor, list[int]]:
    """One stream: each document's tokens then the end-of-text id; also each document's length with it."""
    eot = tokenizer.token_to_id(END_OF_TEXT)
    stream, lengths = [], []
    for encoding in tokenizer.encode_batch([doc.text for doc in documents]):
        stream.extend(encoding.ids)
        stream.append(eot)
        lengths.append(len(encoding.ids) + 1)
    return torch.tensor(stream, dtype=torch.int32), lengths


# ----------------------------------------------------------------------------
# the packed file


@dataclass
class Pack:
    """A prepared corpus: the token streams of both splits and everything needed to say what they are."""

    meta: dict
    train: torch.Tensor  # int64 token ids
    valid: torch.Tensor
    tokenizer_json: str
    path: str | None = None
    file_sha256: str | None = None

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])


def prepare(corpus: Corpus, vocab_size: int = 8192, valid_fraction: float = 0.05, salt: str = DEFAULT_SALT) -> Pack:
    """Split ``corpus`` by document, train the tokenizer on the training split, encode both splits."""
    train_docs, valid_docs = split_documents(corpus.documents, valid_fraction, salt)
    tokenizer = train_tokenizer(train_docs, vocab_size)
    train_stream, train_lengths = encode(tokenizer, train_docs)
    valid_stream, valid_lengths = encode(tokenizer, valid_docs)
    if tokenizer.get_vocab_size() > 2**16:
        raise ValueError(f"vocabulary {tokenizer.get_vocab_size()} does not fit uint16")
    tokenizer_json = tokenizer.to_str()
    meta = {
        "format": PACK_FORMAT,
        "corpus": {
            "name": corpus.name, "sources": corpus.sources, "documents": len(corpus.documents),
            "bytes": corpus.n_bytes, "sha256": corpus.sha256(),
            "sha256_rule": "SHA-256 over the documents in id order, each as <id> NUL <byte count> NUL <bytes>",
        },
        "split": {
            "rule": "held out iff first 8 bytes of SHA-256('<salt>:<document id>') / 2**64 < valid_fraction",
            "salt": salt, "valid_fraction": valid_fraction,
            "train": {"documents": [d.id for d in train_docs], "tokens_per_document": train_lengths,
                      "bytes": sum(len(d.data) for d in train_docs), "sha256": documents_sha256(train_docs)},
            "valid": {"documents": [d.id for d in valid_docs], "tokens_per_document": valid_lengths,
                      "bytes": sum(len(d.data) for d in valid_docs), "sha256": documents_sha256(valid_docs)},
        },
        "tokenizer": {
            "kind": "byte-level BPE (tokenizers), trained on the training split only",
            "library": f"tokenizers {_tokenizers_version()}", "vocab_size": tokenizer.get_vocab_size(),
            "end_of_text": END_OF_TEXT, "end_of_text_id": tokenizer.token_to_id(END_OF_TEXT),
            "sha256": hashlib.sha256(tokenizer_json.encode()).hexdigest(),
        },
        "tokens": {"train": int(train_stream.numel()), "valid": int(valid_stream.numel()),
                   "train_sha256": _stream_sha256(train_stream), "valid_sha256": _stream_sha256(valid_stream)},
    }  # fmt: skip
    return Pack(meta, train_stream.long(), valid_stream.long(), tokenizer_json)


def _tokenizers_version() -> str:
    try:
        import tokenizers

        return tokenizers.__version__
    except ImportError:
        return "unknown"


def _stream_bytes(stream: torch.Tensor) -> bytes:
    """The stream as little-endian uint16 (the machines this runs on are little-endian; checked on import)."""
    values = stream.to(torch.int32)
    if values.numel() and (int(values.min()) < 0 or int(values.max()) >= 2**16):
        raise ValueError("token ids must lie in [0, 65536) to pack as uint16")
    return values.to(torch.uint16).numpy().tobytes() if values.numel() else b""


def _stream_sha256(stream: torch.Tensor) -> str:
    """SHA-256 of the stream as little-endian uint16 (as stored in the pack)."""
    return hashlib.sha256(_stream_bytes(stream)).hexdigest()


def write_pack(pack: Pack, path: str | os.PathLike) -> str:
    """Write ``pack`` to ``path`` (a zip, deflated); returns the file's SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fixed timestamp keeps the file's bytes (and so its hash) the same for the same content.
    stamp = (2020, 1, 1, 0, 0, 0)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in (
            ("meta.json", json.dumps(pack.meta, indent=1, sort_keys=True).encode()),
            ("tokenizer.json", pack.tokenizer_json.encode()),
            ("train.u16", _stream_bytes(pack.train)),
            ("valid.u16", _stream_bytes(pack.valid)),
        ):
            info = zipfile.ZipInfo(name, stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    pack.path, pack.file_sha256 = str(path), file_sha256(path)
    return pack.file_sha256


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_stream(data: bytes) -> torch.Tensor:
    values = torch.frombuffer(bytearray(data), dtype=torch.uint16) if data else torch.empty(0, dtype=torch.uint16)
    return values.to(torch.int64)


def load_pack(path: str | os.PathLike) -> Pack:
    """Read a ``.fp4pack`` file and check its token streams against the hashes it records."""
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("meta.json"))
        if meta.get("format") != PACK_FORMAT:
            raise ValueError(f"{path}: not an {PACK_FORMAT} file (format {meta.get('format')!r})")
        tokenizer_json = archive.read("tokenizer.json").decode()
        train, valid = _read_stream(archive.read("train.u16")), _read_stream(archive.read("valid.u16"))
    pack = Pack(meta, train, valid, tokenizer_json, str(path), file_sha256(path))
    for name, stream in (("train", train), ("valid", valid)):
        if _stream_sha256(stream) != meta["tokens"][f"{name}_sha256"]:
            raise ValueError(f"{path}: the {name} tokens do not match the SHA-256 recorded in the file")
    return pack


def summary(pack: Pack) -> dict:
    """What the study records about its data (everything in the pack's metadata but the document lists)."""
    meta = json.loads(json.dumps(pack.meta))
    for side in ("train", "valid"):
        split = meta["split"][side]
        split["n_documents"] = len(split.pop("documents"))
        split.pop("tokens_per_document")
    meta["split"]["valid_documents"] = pack.meta["split"]["valid"]["documents"]
    meta["pack"] = {"path": pack.path, "sha256": pack.file_sha256}
    return meta

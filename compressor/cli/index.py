"""focal index: fill and query a retrieval index, either a data directory directly (no server
may hold it at the same time) or a running server (--target, with --token or $FOCAL_TOKEN).

    focal index add docs/*.md corpus.jsonl --data-dir ./data --namespace wiki
    focal index search "Which river flows through Paris?" --data-dir ./data --namespace wiki
    focal index stats --target 127.0.0.1:50051
    focal index rebuild --data-dir ./data      # after a damaged snapshot: replay the log
    focal index repair --data-dir ./data       # after a damaged log: keep what the snapshot and log prove
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from compressor.cli.call import add_client_arguments
from compressor.cli.jsonl import jsonl_rows
from compressor.retrieval.errors import EmbedderMismatch, IndexCorrupt, IndexInputError, NamespaceNotFound
from compressor.service import settings as settings_module


def _documents(paths: list[str]) -> Iterator[tuple[str, str, dict[str, str]]]:
    """(id, text, metadata) from plain files (one document each) or JSONL ({"id"?, "text", "metadata"?} per
    line, or questions in the shared data schema, whose chunks become documents). Without an id, a
    document's id is a hash of its text, so adding the same file twice replaces rather than repeats."""
    for path in map(Path, paths):
        if path.suffix != ".jsonl":
            yield str(path), path.read_text(errors="replace"), {"path": str(path)}
            continue
        for number, row in jsonl_rows(path, IndexInputError):
            rows = row.get("chunks", [row])
            for item in rows:
                if not isinstance(item.get("text"), str):
                    raise IndexInputError(f"{path}:{number}", "needs a 'text' string (or 'chunks' of them)")
                text = f"{item['title']}\n{item['text']}" if item.get("title") else item["text"]
                doc_id = str(item.get("id") or hashlib.sha1(text.encode()).hexdigest()[:16])
                metadata = {k: str(v) for k, v in (item.get("metadata") or {}).items()}
                yield doc_id, text, metadata


def _filter(pairs: list[str]) -> dict[str, str]:
    where = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise IndexInputError("--filter", f"{pair!r} is not KEY=VALUE")
        where[key] = value
    return where


class _Local:
    def __init__(self, settings: settings_module.Settings) -> None:
        from compressor.retrieval.opening import open_store

        if not settings.data_dir:
            raise IndexInputError("--data-dir", "is required (or --target to use a running server)")
        self.store = open_store(settings.store_config())

    def upsert(self, namespace, batch):
        from compressor.retrieval.contract import Document

        return self.store.upsert(namespace, [Document(*d) for d in batch])

    def search(self, namespace, query, top_k, where):
        return [(h.id, h.score, h.text, h.metadata) for h in self.store.search(namespace, query, top_k, where)]

    def delete(self, namespace, ids):
        return self.store.delete(namespace, ids)

    def stats(self):
        return self.store.stats()

    def close(self):
        self.store.close()


class _Remote:
    def __init__(self, args: argparse.Namespace) -> None:
        from compressor.client import FocalClient

        self.client = FocalClient(args.target, token=args.token or None, root_ca=args.ca,
                                  client_cert=args.client_cert, client_key=args.client_key, timeout=600)

    def upsert(self, namespace, batch):
        reply = self.client.upsert(batch, namespace=namespace)
        return reply.documents, reply.chunks

    def search(self, namespace, query, top_k, where):
        hits = self.client.search(query, top_k, namespace=namespace, filter=where).hits
        return [(f"{h.document_id}#{h.chunk}", h.score, h.text, dict(h.metadata)) for h in hits]

    def delete(self, namespace, ids):
        return self.client.delete(ids, namespace=namespace).deleted

    def stats(self):
        from google.protobuf.json_format import MessageToDict

        return MessageToDict(self.client.stats())

    def close(self):
        self.client.close()


def _run(args: argparse.Namespace) -> int:
    import grpc
    from tqdm import tqdm

    try:
        settings = settings_module.resolve(args)
        if args.action in ("rebuild", "repair"):
            if not settings.data_dir:
                raise IndexInputError("--data-dir", f"is required by {args.action}")
            if args.action == "rebuild":
                from compressor.retrieval.store import rebuild as run
            else:
                from compressor.retrieval.repair import repair as run
            print(json.dumps(run(settings.data_dir, settings.index_spec()), indent=1))
            return 0
        index = _Remote(args) if args.target else _Local(settings)
        try:
            if args.action == "add":
                read = list(_documents(args.paths))
                documents = list({d[0]: d for d in read}.values())  # the last of a repeated id wins, as in Upsert
                written = 0
                with tqdm(total=len(documents), unit="doc", desc="indexing", file=sys.stderr) as bar:
                    for start in range(0, len(documents), args.batch):
                        batch = documents[start:start + args.batch]
                        written += index.upsert(args.namespace, batch)[1]
                        bar.update(len(batch))
                print(f"{len(documents)} documents ({len(read) - len(documents)} repeated ids merged), {written} "
                      f"chunks into namespace {args.namespace or 'default'!r}", file=sys.stderr)
            elif args.action == "search":
                for doc_id, score, text, metadata in index.search(args.namespace, args.query, args.top_k,
                                                                  _filter(args.filter)):
                    print(json.dumps({"id": doc_id, "score": round(score, 4), "metadata": metadata, "text": text}))
            elif args.action == "delete":
                print(f"deleted {index.delete(args.namespace, args.ids)} of {len(args.ids)}", file=sys.stderr)
            else:
                print(json.dumps(index.stats(), indent=1))
        finally:
            index.close()
    except (IndexInputError, NamespaceNotFound, EmbedderMismatch, IndexCorrupt, ValueError, OSError) as exc:
        print(f"focal index {args.action}: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        print(f"focal index {args.action}: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    return 0


def add_parser(commands) -> None:
    index = commands.add_parser("index", help="fill and query the retrieval index (a data directory or a server)",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = index.add_subparsers(dest="action", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help)
        parser.add_argument("--namespace", default="", help="default: 'default'")
        add_client_arguments(parser, target=None)
        settings_module.add_arguments(parser, settings_module.STORE_SETTINGS)
        parser.set_defaults(run=_run)
        return parser

    add = action("add", "chunk, embed and store files or JSONL documents")
    add.add_argument("paths", nargs="+", help="plain files (one document each) or JSONL")
    add.add_argument("--batch", type=int, default=64, help="documents per write (default: %(default)s)")
    search = action("search", "the chunks most similar to a query, one JSON object per line")
    search.add_argument("query")
    search.add_argument("--top-k", type=int, default=5)
    search.add_argument("--filter", action="append", default=[], help="KEY=VALUE metadata filter (repeatable)")
    delete = action("delete", "delete documents by id")
    delete.add_argument("ids", nargs="+")
    action("stats", "documents and chunks per namespace (JSON)")
    action("rebuild", "rebuild the index of --data-dir from its write-ahead log (after a damaged snapshot)")
    action("repair", "repair a damaged write-ahead log of --data-dir, keeping what the snapshot and the log prove")

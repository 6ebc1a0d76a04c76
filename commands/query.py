"""The commands that find neighbours: search (a query or a vector expression), similar (to an
item, a vector or an image) and words (GloVe neighbours of a word)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from latent.indexer.errors import LatentError
from latent.search import search as search_index, similar as find_similar
from latent.search.dupes import DEFAULT_THRESHOLD, distinct_hits
from latent.search.explore import query_term, search_expression
from latent.search.keyword import MODES, SYNTAXES, search_by_mode
from latent.search.query import above, encode_query
from latent.search.words import neighbours
from .common import (echo_hits, explain_empty, index_dir, k_option, min_score_option, note, open_index,
                     output_options, progress_bars, where_option)


def collapse_options(f):
    f = click.option("--collapse-at", type=click.FloatRange(0.0, 1.0, min_open=True), default=DEFAULT_THRESHOLD,
                     show_default=True, metavar="S", help="With --collapse: the cosine similarity from which two "
                                                          "hits count as near-identical.")(f)
    return click.option("--collapse", is_flag=True,
                        help="Fold near-identical hits (see --collapse-at) into the best-ranked one and show how "
                             "many each stands for; k distinct hits come back.")(f)


def _found(index, find, k: int, collapse: bool, collapse_at: float, min_score: float | None):
    hits = distinct_hits(index, find, k=k, threshold=collapse_at) if collapse else find(k)
    return above(hits, min_score)


@click.command("search")
@index_dir
@click.argument("query", required=False)
@click.option("--expr", metavar="EXPR",
              help="A vector expression instead of QUERY: keys, quoted texts and image files with + - and "
                   "weights, e.g. 'king - man + woman' or '0.5*\"a red car\" + photo.jpg'.")
@click.option("--include-terms", is_flag=True, help="With --expr: keep the keys it names among the hits.")
@click.option("--mode", type=click.Choice(MODES), default="vector", show_default=True,
              help="vector: nearest neighbours of the encoded QUERY; keyword: BM25 over the texts (SQLite FTS5; "
                   "the score is BM25); hybrid: both rankings fused by reciprocal rank (score: sum of 1/(60+rank)).")
@click.option("--syntax", type=click.Choice(SYNTAXES), default="words", show_default=True,
              help="For keyword and hybrid: QUERY as plain words (each matched as written) or in FTS5 query "
                   "syntax (AND, OR, NOT, \"phrases\", prefix*, NEAR).")
@k_option
@where_option
@min_score_option
@collapse_options
@output_options
def search(directory: Path, query: str | None, expr: str | None, include_terms: bool, mode: str, syntax: str, k: int,
           where: str | None, min_score: float | None, collapse: bool, collapse_at: float):
    """Search DIRECTORY for the items nearest to QUERY (encoded by the index's encoder), or
    to a vector expression (--expr). DIRECTORY may be a built-in index: @words, @sentences, @photos.
    --mode keyword finds exact words, names and codes in the texts; --mode hybrid adds them to
    the nearest neighbours.

    \b
    Example:
        latent search notes "a dog on the beach" -k 5 --where "topic=animals"
        latent search notes "GPL-3.0" --mode hybrid
        latent search @words --expr "king - man + woman" -k 3
        latent search notes "licence" --collapse --min-score 0.3 --fields topic --format csv
    """
    if query is None and expr is None:
        raise click.UsageError("the query is missing: give a QUERY (a text, or an image file) or --expr EXPR")
    if query is not None and expr is not None:
        raise click.UsageError("give a QUERY or --expr, not both")
    if expr is not None and mode != "vector":
        raise click.UsageError("--expr is vector arithmetic: it searches in --mode vector only")
    with open_index(directory) as index:
        if expr is not None:
            def find(n):
                return search_expression(index, expr, k=n, where=where, include_terms=include_terms)
        elif mode != "vector":
            def find(n):
                return search_by_mode(index, query, mode=mode, k=n, where=where, syntax=syntax)
        elif (term := query_term(index, query)).kind == "image":
            note(f"searching by the image file {term.value}")

            def find(n):
                return find_similar(index, image=term.value, k=n, where=where)
        else:
            vector = encode_query(index, query)
            unknown = index.encoder.unknown_words(query)
            if unknown:
                note(f"not in the {index.encoder_name} vocabulary, left out of the query: {', '.join(unknown)}")

            def find(n):
                return search_index(index, vector, k=n, where=where)
        hits = _found(index, find, k, collapse, collapse_at, min_score)
        explain_empty(index, hits, where)
    echo_hits(hits, collapsed=collapse, **({"query": query, "mode": mode} if query is not None else {"expr": expr}))


@click.command()
@index_dir
@click.option("--key", help="Key of an item in the index (excluded from its own results).")
@click.option("--vector", "vector_file", type=click.Path(exists=True, dir_okay=False),
              help="A .npy file holding one vector of the index's dimension.")
@click.option("--image", "image_file", type=click.Path(exists=True, dir_okay=False),
              help="An image file (need not be in the index), for image encoders.")
@k_option
@where_option
@click.option("--include-self", is_flag=True, help="Keep the item itself (or an identical image) among the hits.")
@min_score_option
@collapse_options
@output_options
def similar(directory: Path, key: str | None, vector_file: str | None, image_file: str | None, k: int,
            where: str | None, include_self: bool, min_score: float | None, collapse: bool, collapse_at: float):
    """Items of DIRECTORY nearest to a stored item (--key), a vector (--vector) or an image (--image).
    The item itself (for --image: a stored image with the same bytes) is left out unless
    --include-self.

    \b
    Example:
        latent similar notes --key s0202 -k 5
        latent similar photos --image cat.jpg --where "label=tabby"
    """
    if sum(x is not None for x in (key, vector_file, image_file)) != 1:
        raise click.UsageError("give exactly one of --key, --vector or --image")
    vector = None
    if vector_file:
        try:
            vector = np.load(vector_file, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise LatentError(f"cannot read {vector_file} as a .npy array ({e})") from e
    with open_index(directory) as index:
        def find(n):
            return find_similar(index, key=key, vector=vector, image=image_file, k=n, where=where,
                                include_self=include_self)
        hits = _found(index, find, k, collapse, collapse_at, min_score)
        explain_empty(index, hits, where)
    echo_hits(hits, collapsed=collapse)


@click.command()
@click.argument("word")
@k_option
@click.option("--max-rank", type=click.IntRange(0), default=100_000, show_default=True,
              help="Neighbours among the N most frequent words only (GloVe's rare tokens are noisy); 0: all "
                   "400,000.")
@output_options
def words(word: str, k: int, max_rank: int):
    """Nearest GloVe words to WORD (builds a cached word index on first use), among the
    100,000 most frequent words unless --max-rank says otherwise.

    \b
    Example:
        latent words toilet -k 5
        latent words paris --max-rank 0    # every token, rare ones too
    """
    progress = progress_bars()
    try:
        hits = neighbours(word, k=k, progress=progress, max_rank=max_rank or None)
    finally:
        progress.close()
    echo_hits(hits, word=word)


COMMANDS = [search, similar, words]

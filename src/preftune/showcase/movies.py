"""Rotten Tomatoes review snippets as DPO pairs: for a movie with both kinds, a fresh (positive) critic snippet
is chosen over a rotten (negative) one, in answer to a request for a short review of that movie.

Movies, not pairs, are split between training and held-out, so no held-out movie is ever seen in training.
"""

from __future__ import annotations

import bz2
import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DataError

_COLUMNS = ("category", "text", "movie_name")


@dataclass
class MovieReviews:
    slug: str  # the corpus' movie_name, e.g. "about_a_boy"
    fresh: list[str] = field(default_factory=list)
    rotten: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return movie_title(self.slug)


def movie_title(slug: str) -> str:
    """``"about_a_boy"`` -> ``"About A Boy"``: the corpus keeps only slugs, so this is the best title we have."""
    return " ".join(word.capitalize() for word in slug.split("_") if word)


def review_prompt(title: str) -> str:
    return f"Write a one-sentence review of the movie {title}."


def review_prompts(titles: list[str]) -> list[str]:
    """The prompt the demo trains on, for each movie title (``preftune iterate --demo`` samples these)."""
    return [review_prompt(t) for t in titles]


def read_reviews(path: Path, max_chars: int = 150) -> dict[str, MovieReviews]:
    """Fresh and rotten snippets per movie from the corpus' ``.csv`` or ``.csv.bz2`` file, in file order.

    Snippets longer than ``max_chars`` are skipped: the prompt asks for one sentence, and short sequences keep
    the demo inside its time budget. Plot summaries (category "plot") are not reviews and are ignored.
    """
    opener = bz2.open if path.suffix == ".bz2" else open
    movies: dict[str, MovieReviews] = {}
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: header lacks column(s) {', '.join(missing)}")
        for row_number, row in enumerate(reader, start=2):  # row 1 is the header
            kind, text, slug = (row[c] for c in _COLUMNS)
            if kind not in ("fresh", "rotten"):
                continue
            if not slug or text is None:
                raise DataError(f"{path}: row {row_number}: empty movie_name or text")
            text = " ".join(text.split())
            if text and len(text) <= max_chars:
                getattr(movies.setdefault(slug, MovieReviews(slug)), kind).append(text)
    return movies


def movies_with_both(movies: dict[str, MovieReviews]) -> list[MovieReviews]:
    return [movies[slug] for slug in sorted(movies) if movies[slug].fresh and movies[slug].rotten]


def split_by_movie(
    movies: list[MovieReviews], num_heldout: int, seed: int
) -> tuple[list[MovieReviews], list[MovieReviews]]:
    """(train, held-out) movies: a seeded shuffle of the movies sorted by slug, so the split depends only on the
    corpus and the seed. Raises when fewer than one training movie would remain."""
    if num_heldout >= len(movies):
        raise DataError(
            f"only {len(movies)} movies have both fresh and rotten reviews; {num_heldout} held out"
        )
    order = sorted(movies, key=lambda m: m.slug)
    random.Random(seed).shuffle(order)
    return order[num_heldout:], order[:num_heldout]


def build_pairs(movies: list[MovieReviews], pairs_per_movie: int) -> list[dict[str, str]]:
    """Up to ``pairs_per_movie`` rows per movie, ``{"prompt", "chosen", "rejected", "movie"}``: the k-th fresh
    snippet against the k-th rotten one, so no snippet is used twice."""
    rows = []
    for movie in movies:
        prompt = review_prompt(movie.title)
        for chosen, rejected in list(zip(movie.fresh, movie.rotten, strict=False))[:pairs_per_movie]:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "movie": movie.slug})
    return rows

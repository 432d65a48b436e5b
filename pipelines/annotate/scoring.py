"""Where a page's label comes from (annotate.scoring): one small class per mode, chosen once by scoring_for.

  parse         the score line the model writes (`Educational score: <points>`)
  distribution  the expected score of the digits 0..5 at the score position; nothing is generated
  both          the answer, then the digits after its own score line: the label from the digits, the
                parsed score kept beside it (their agreement is reported)

A mode says which saved records it reads (answers in parts/, digits in scores/), turns one annotator's
records of one page into a Reading, and adds its own fields to the page's annotation, the manifest's
counts and each annotator's entry. Tally holds one annotator's counts over the pages.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from pipelines.annotate.prompt import (
    MAX_SCORE,
    DigitScore,
    ParsedScore,
    digit_score,
    int_score,
    parse_score,
    spearman,
)

NO_ANSWER = ParsedScore(None, None, False)


@dataclass
class Reading:
    """What one annotator's saved records say about one page."""

    label: float | None  # the score that counts for this annotator (None: no label)
    parsed: ParsedScore  # the answer's score line (NO_ANSWER where nothing was generated)
    digits: DigitScore | None  # the digits' distribution (None: not read, or no mass on the digits)
    answer: str | None  # the justification, whole (None where nothing was generated)
    model: str | None
    finish_reason: str | None


@dataclass
class Tally:
    """One annotator over the pages: parsed / failed / clipped / finish_<reason> / scored / unscored / mass."""

    counts: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)  # int score -> pages
    argmax: Counter = field(default_factory=Counter)  # argmax digit -> pages
    parsed: list[float | None] = field(default_factory=list)  # per page with digits read (for agreement)
    digits: list[DigitScore | None] = field(default_factory=list)

    def add(self, r: Reading, scoring: Scoring) -> None:
        c = self.counts
        if scoring.reads_answers:
            c["finish_" + (r.finish_reason or "?")] += 1
            c["parsed" if r.parsed.score is not None else "failed"] += 1
            c["clipped"] += r.parsed.clipped
        if scoring.reads_digits:
            c["scored" if r.digits is not None else "unscored"] += 1
            c["mass"] += r.digits.mass if r.digits is not None else 0.0
            if r.digits is not None:
                self.argmax[r.digits.argmax] += 1
            self.parsed.append(r.parsed.score)
            self.digits.append(r.digits)
        if r.label is not None:
            self.labels[int_score(r.label)] += 1

    def distribution(self, n_pages: int) -> dict:
        c, scored = self.counts, [d for d in self.digits if d is not None]
        return {
            "scored": c["scored"], "unscored": c["unscored"],
            "mean_digit_mass": round(c["mass"] / n_pages, 4) if n_pages else None,
            "mean_expected_score": round(sum(d.expected for d in scored) / len(scored), 4) if scored else None,
            "argmax_distribution": {str(s): self.argmax.get(s, 0) for s in range(MAX_SCORE + 1)},
        }


def agreement(parsed: list[float | None], dist: list[DigitScore | None]) -> dict:
    pairs = [(p, d) for p, d in zip(parsed, dist) if p is not None and d is not None]
    return {
        "pages": len(pairs),
        "argmax_equals_parsed": round(sum(d.argmax == int_score(p) for p, d in pairs) / len(pairs), 4) if pairs else None,
        "mean_abs_diff_expected_parsed": round(sum(abs(d.expected - p) for p, d in pairs) / len(pairs), 4) if pairs else None,
        "spearman_expected_parsed": spearman([d.expected for _, d in pairs], [p for p, _ in pairs]),
    }


class Scoring:
    """A mode: what it reads, how it labels, what it reports (the base adds nothing)."""

    name = ""
    reads_answers = False  # the generated answers (parts/)
    reads_digits = False  # the digits' probabilities (scores/)

    def read(self, answer: dict, digits: dict) -> Reading:
        """One annotator's saved answer row and digits row of a page ({} for the one the mode does not read)."""
        raise NotImplementedError

    def page_fields(self, readings: list[Reading]) -> dict:
        return {}

    def count_fields(self, counts: dict, n_pages: int, n_no_parse: int) -> dict:
        return {}

    def annotator_fields(self, tally: Tally, n_pages: int) -> dict:
        return {}

    def summary(self, c: dict) -> str:
        return (f"{c['documents']:,} of {c['pages']:,} pages scored, parse failure rate "
                f"{c['parse_failure_rate']:.1%}; labels {c['label_distribution']}")


class Parse(Scoring):
    name, reads_answers = "parse", True

    def read(self, answer: dict, digits: dict) -> Reading:
        p = parse_score(answer.get("text") or "")
        return Reading(p.score, p, None, answer.get("text"), answer.get("generator"), answer.get("finish_reason"))


class Distribution(Scoring):
    name, reads_digits = "distribution", True

    def read(self, answer: dict, digits: dict) -> Reading:
        ds = digit_score(digits.get("probs"))
        return Reading(ds.expected if ds is not None else None, NO_ANSWER, ds, None, digits.get("generator"), None)

    def page_fields(self, readings: list[Reading]) -> dict:
        dists = [r.digits for r in readings]
        return {
            "scoring": self.name,  # `scores` are the expected scores from the digits' probabilities
            "parsed_scores": [r.parsed.score for r in readings],
            "expected_scores": [round(d.expected, 6) if d else None for d in dists],
            "argmax_scores": [d.argmax if d else None for d in dists],
            "digit_probs": [list(d.probs) if d else None for d in dists],
            "digit_mass": [round(d.mass, 6) if d else None for d in dists],
        }

    def parse_failure_rate(self, n_pages: int, n_no_parse: int) -> float | None:
        return None  # nothing generated, nothing parsed

    def count_fields(self, counts: dict, n_pages: int, n_no_parse: int) -> dict:
        # `unparsed` are the pages with no label; parse failures are counted apart
        return {"scoring": self.name, "label_from": "expected score of the digits 0..5 at the score position",
                "unlabelled_rate": counts["parse_failure_rate"],
                "parse_failure_rate": self.parse_failure_rate(n_pages, n_no_parse)}

    def annotator_fields(self, tally: Tally, n_pages: int) -> dict:
        return {"distribution": tally.distribution(n_pages)}

    def summary(self, c: dict) -> str:
        pf = c["parse_failure_rate"]
        return (f"{c['documents']:,} of {c['pages']:,} pages labelled from the digits' distribution"
                + (f" (parse failure rate {pf:.1%})" if pf is not None else "") + f"; labels {c['label_distribution']}")


class Both(Distribution):
    name, reads_answers = "both", True

    def read(self, answer: dict, digits: dict) -> Reading:
        p, ds = parse_score(answer.get("text") or ""), digit_score(digits.get("probs"))
        return Reading(ds.expected if ds is not None else None, p, ds, answer.get("text"), answer.get("generator"),
                       answer.get("finish_reason"))

    def parse_failure_rate(self, n_pages: int, n_no_parse: int) -> float | None:
        return round(n_no_parse / n_pages, 4) if n_pages else None  # pages no annotator's answer parsed

    def annotator_fields(self, tally: Tally, n_pages: int) -> dict:
        return {**super().annotator_fields(tally, n_pages), "agreement": agreement(tally.parsed, tally.digits)}


SCORINGS = {s.name: s for s in (Parse, Distribution, Both)}


def scoring_for(mode: str) -> Scoring:
    return SCORINGS[mode]()

"""FineWeb-Edu's additive 5-point prompt, and how an answer becomes a score: the parsed last
`Educational score: N` line, or the expected score of the digits' next-token distribution."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import StudyError

MAX_SCORE = 5



DIGITS = tuple(f" {d}" for d in range(MAX_SCORE + 1))  # the candidates read at the score position



# Our wording of FineWeb-Edu's additive prompt: the same five criteria and closing line. The page
# comes first and the instructions last, which small instruct models follow far better.
PROMPT_TEMPLATE = """\
Below is an extract from a web page.

<extract>
{extract}
</extract>

Judge how useful this extract would be for teaching, from primary school up to grade school, with the \
additive 5-point scale below. Points add up: the extract earns one point for each criterion it meets.

- 1 point if it gives some basic information related to an educational topic, even if it also \
contains irrelevant or non-academic material such as advertisements or promotion.
- A 2nd point if it touches on elements that matter for education but does not follow educational \
standards closely: it may mix educational content with other material, give only a superficial \
overview, or be written in a disorganised way.
- A 3rd point if it is suitable for educational use and introduces key concepts of school \
curricula: coherent though maybe not complete, possibly with some extra material, like the \
introductory section of a textbook or a basic tutorial, even if some concepts are too complex for \
grade school students.
- A 4th point if it is highly relevant and useful for teaching at a level no higher than grade \
school, in a clear and consistent style: like a textbook chapter or a tutorial with substantial \
educational content, exercises or solutions, little irrelevant material, and concepts not too \
advanced for grade school students.
- A 5th point if its educational value is outstanding and it is perfectly suited to teaching at \
primary or grade school: detailed reasoning, a style that is easy to follow, and deep, thorough \
insight into the subject, with no non-educational or overly complex content.

After reading the extract:
- Justify your total in at most 100 words.
- End with the score on a line of its own, in exactly this format: "Educational score: <points>"
"""



# "Educational score: 3", "**Educational Score:** 4/5", "educational score = 2.5", "Educational score: three"
_NUMBER_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}



_SCORE_LINE = re.compile(
    r"educational\s+score\s*\**\s*[:=]\s*\**\s*(?P<value>[-+]?\d+(?:\.\d+)?|zero|one|two|three|four|five)\b",
    re.IGNORECASE,
)



@dataclass(frozen=True)
class ParsedScore:
    score: float | None  # 0..5, None when the answer has no parseable score line
    raw: str | None  # the value as written ("7", "3.5", "three")
    clipped: bool  # the written value was outside 0..5



def render_prompt(text: str, extract_chars: int = 1000, template: str = PROMPT_TEMPLATE) -> str:
    """The annotation prompt for a page: its first `extract_chars` characters in the template."""
    return template.replace("{extract}", text[:extract_chars].strip())



def parse_score(answer: str) -> ParsedScore:
    """The LAST `Educational score: N` of an answer (a model may restate it), clipped to 0..5."""
    matches = list(_SCORE_LINE.finditer(answer or ""))
    if not matches:
        return ParsedScore(None, None, False)
    raw = matches[-1].group("value")
    value = float(_NUMBER_WORDS[raw.lower()]) if raw.lower() in _NUMBER_WORDS else float(raw)
    if not math.isfinite(value):
        return ParsedScore(None, raw, False)
    clipped = min(max(value, 0.0), float(MAX_SCORE))
    return ParsedScore(clipped, raw, clipped != value)



def int_score(score: float) -> int:
    """Round half up and clip to 0..5 (FineWeb-Edu's `int_score`)."""
    return int(min(max(math.floor(score + 0.5), 0), MAX_SCORE))



def score_prefix(answer: str | None, prefix: str) -> str:
    """Where the digits are read: with no answer (distribution) the prefix alone; after an answer (both),
    the answer up to its last score line, or all of it, then the prefix on a line of its own."""
    if answer is None:
        return prefix
    matches = list(_SCORE_LINE.finditer(answer))
    head = answer[: matches[-1].start()].rstrip(" \t*#") if matches else answer.rstrip()
    if head and not head.endswith("\n"):
        head += "\n"
    return head + prefix



@dataclass(frozen=True)
class DigitScore:
    expected: float  # sum of d * p(d), p normalised over the digits 0..5
    argmax: int
    mass: float  # how much of the next-token probability the six digits hold
    probs: tuple[float, ...]  # normalised, 0..5



def digit_score(probs: list[float] | None) -> DigitScore | None:
    """Expected score and argmax from the six digits' probabilities (None: the digits have no mass)."""
    if not probs or len(probs) != MAX_SCORE + 1:
        return None
    mass = float(sum(probs))
    if not mass > 0 or not math.isfinite(mass):
        return None
    p = [x / mass for x in probs]
    return DigitScore(sum(d * x for d, x in enumerate(p)), max(range(len(p)), key=lambda d: (p[d], -d)), mass,
                      tuple(round(x, 6) for x in p))



def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None with < 3 pairs or a constant side."""
    if len(xs) != len(ys) or len(xs) < 3:
        return None

    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return round(sxy / math.sqrt(sxx * syy), 4) if sxx > 0 and syy > 0 else None



def load_template(path: str | None) -> str:
    if path is None:
        return PROMPT_TEMPLATE
    p = Path(path)
    if not p.is_file():
        raise StudyError(f"annotate.prompt_path={path!r}: no such file (a text file with an {{extract}} placeholder)")
    template = p.read_text()
    if "{extract}" not in template:
        raise StudyError(f"annotate.prompt_path={path!r} has no {{extract}} placeholder for the page text")
    return template


def reference_agreement(pairs: list[tuple[float, float]], field: str, seed: int, n_boot: int = 1000) -> dict:
    """Annotation labels against reference scores on the pages that carry one: Spearman and a percentile
    bootstrap 95% CI over pages (resamples with a constant side are left out). -> manifest `counts.reference`."""
    out: dict = {"field": field, "pages": len(pairs), "spearman": None, "ci95": None}
    rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
    if rho is None:
        return out
    rng = random.Random(seed)
    boots = []
    for _ in range(n_boot):
        sample = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        r = spearman([a for a, _ in sample], [b for _, b in sample])
        if r is not None:
            boots.append(r)
    boots.sort()
    out["spearman"] = rho
    if len(boots) >= n_boot // 2:
        out["ci95"] = [boots[int(0.025 * (len(boots) - 1))], boots[int(0.975 * (len(boots) - 1))]]
    return out


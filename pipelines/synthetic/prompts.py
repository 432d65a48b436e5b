"""Cosmopedia-style prompts: a seed x an audience x a style, rendered from YAML templates.

Seeds are ~1000-character extracts of the ingest stage's web documents (optionally with a topic
label from their metadata) or a list of topics / outlines (YAML or CSV). Audiences, styles and the
shared rules are data in pipelines/synthetic/templates/*.yaml (or `prompts.templates_dir`).

The sampling plan turns the config's weights into exact counts per (audience, style) cell; a
seeded shuffle then pairs cells with seeds, so the whole prompt set is a function of (config, seed,
ingest output). Output, in results/<run>/prompts/:
  prompts_00000.jsonl.gz ...   one document per prompt: {"id", "text" (the prompt), "source": "prompts",
                               "metadata": {audience, style, template_id, template_sha, seed_id, ...}}

Over 400 lines as one thing: templates, seeds, allocation and rendering of one prompt set.
"""

from __future__ import annotations

import csv
import hashlib
import math
import random
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pipelines.config import PromptsConfig, read_yaml
from pipelines.data.documents import ShardedWriter, read_documents
from pipelines.errors import StudyError
from pipelines.runs.manifest import StageContext

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# placeholders each kind of template may use (the first of each pair is required)
FIELDS = {
    "from_extract": ({"extract"}, {"extract", "topic_clause", "audience", "audience_guidance", "rules"}),
    "from_topic": ({"topic"}, {"topic", "outline_block", "audience", "audience_guidance", "rules"}),
}


# ---------------------------------------------------------------------------------------------
# templates


@dataclass(frozen=True)
class Audience:
    id: str
    label: str
    guidance: str


@dataclass(frozen=True)
class Style:
    id: str
    version: int
    label: str
    exclude_audiences: tuple[str, ...]
    from_extract: str
    from_topic: str


@dataclass(frozen=True)
class Templates:
    audiences: dict[str, Audience]  # in file order
    styles: dict[str, Style]  # in file-name order
    rules: str
    rules_version: int

    def cells(self) -> list[tuple[str, str]]:
        """(audience, style) pairs a prompt may use, audiences outer."""
        return [(a, s) for a in self.audiences for s, st in self.styles.items() if a not in st.exclude_audiences]

    def render(self, audience: str, style: str, seed: "Seed") -> tuple[str, str, str]:
        """-> (prompt text, template id, sha of the unfilled template text)."""
        aud, st = self.audiences[audience], self.styles[style]
        kind = "from_extract" if seed.kind == "web" else "from_topic"
        template = getattr(st, kind)
        values = {
            "audience": aud.label,
            "audience_guidance": aud.guidance,
            "rules": self.rules,
            "extract": seed.text,
            "topic": seed.topic or seed.text,
            "topic_clause": f" about {seed.topic}" if seed.topic and seed.kind == "web" else "",
            "outline_block": ("\n\nCover these points, in this order:\n" + seed.outline.strip() + "\n")
            if seed.outline else "",
        }
        # str.format does not re-read what it inserts: braces inside an extract stay literal
        text = template.format_map(values)
        text = re.sub(r"\n{3,}", "\n\n", text).strip()
        template_id = f"{style}/{audience}/{kind}/v{st.version}.{self.rules_version}"
        sha = hashlib.sha256("\x00".join((template, aud.label, aud.guidance, self.rules)).encode()).hexdigest()[:12]
        return text, template_id, sha


def unwrap(template: str) -> str:
    """Join the hard-wrapped lines of a YAML block into paragraphs; keep blank lines, list items
    ("- "), separators ("---") and lines that start with a placeholder on lines of their own."""
    out: list[str] = []
    for line in template.splitlines():
        bare = line.strip()
        prev = out[-1] if out else ""
        own_line = not bare or bare.startswith(("- ", "---", "{")) or not prev.strip() \
            or prev.strip() == "---" or prev.rstrip().endswith(":")
        if line.startswith(" ") and bare and prev.strip().startswith("- "):
            own_line = False  # an indented continuation of a list item
        if own_line:
            out.append(bare)
        else:
            out[-1] = prev.rstrip() + " " + bare
    return "\n".join(out)


def _check_placeholders(path: Path, key: str, template: Any) -> str:
    if not isinstance(template, str) or not template.strip():
        raise StudyError(f"{path}: `{key}` must be a non-empty text")
    required, allowed = FIELDS[key]
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as e:
        raise StudyError(f"{path}: `{key}` is not a valid template ({e}); write a literal brace as {{{{ or }}}}") from None
    unknown = names - allowed
    if unknown:
        raise StudyError(f"{path}: `{key}` uses unknown placeholder(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if not required <= names:
        raise StudyError(f"{path}: `{key}` must contain {{{sorted(required)[0]}}}")
    return unwrap(template)


def load_templates(directory: str | Path | None = None) -> Templates:
    """Read audiences.yaml, rules.yaml and one file per style (`kind: style`) from `directory`."""
    d = Path(directory) if directory else TEMPLATES_DIR
    files = sorted(d.glob("*.yaml"))
    if not files:
        raise StudyError(f"no templates (*.yaml) in {d}; point prompts.templates_dir at a folder like {TEMPLATES_DIR}")
    audiences: dict[str, Audience] = {}
    styles: dict[str, Style] = {}
    rules: tuple[str, int] | None = None
    for path in files:
        data = read_yaml(path)
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind == "audiences":
            for aid, a in (data.get("audiences") or {}).items():
                if not isinstance(a, dict) or not a.get("label") or not a.get("guidance"):
                    raise StudyError(f"{path}: audience `{aid}` needs `label` and `guidance`")
                audiences[aid] = Audience(aid, a["label"].strip(), a["guidance"].strip())
        elif kind == "rules":
            if not isinstance(data.get("rules"), str):
                raise StudyError(f"{path}: `rules` must be a text")
            rules = (data["rules"].strip(), int(data.get("version", 1)))
        elif kind == "style":
            sid = data.get("id") or path.stem
            missing = [k for k in ("label", "from_extract", "from_topic") if k not in data]
            if missing:
                raise StudyError(f"{path}: style `{sid}` lacks {', '.join(missing)}")
            styles[sid] = Style(
                sid, int(data.get("version", 1)), data["label"], tuple(data.get("exclude_audiences") or ()),
                _check_placeholders(path, "from_extract", data["from_extract"]),
                _check_placeholders(path, "from_topic", data["from_topic"]),
            )
        else:
            raise StudyError(f"{path}: expected `kind: audiences`, `kind: rules` or `kind: style`, got {kind!r}")
    if not audiences or not styles or rules is None:
        raise StudyError(f"{d}: templates need audiences (kind: audiences), rules (kind: rules) and at least "
                         f"one style (kind: style); found {len(audiences)} audiences, {len(styles)} styles, "
                         f"{'rules' if rules else 'no rules'}")
    for st in styles.values():
        unknown = set(st.exclude_audiences) - set(audiences)
        if unknown:
            raise StudyError(f"style `{st.id}` excludes unknown audience(s) {sorted(unknown)}; known: {list(audiences)}")
    return Templates(audiences, styles, rules[0], rules[1])


# ---------------------------------------------------------------------------------------------
# seeds


@dataclass(frozen=True)
class Seed:
    id: str  # the seed document's id, or `topic:<id>`
    kind: str  # web | topic
    text: str  # the extract (web) or the topic (topic)
    source: str  # the seed document's source, or the topics file's name
    topic: str | None = None  # a topic label (web) or the topic itself
    outline: str | None = None  # topic seeds: points to cover


def extract(text: str, max_chars: int) -> str:
    """The first ~max_chars characters, cut at the end of a sentence (or word) when one is near."""
    text = re.sub(r"[ \t]+\n", "\n", text.strip())
    text = re.sub(r"\n{3,}", "\n\n", text)
    if len(text) <= max_chars:
        return text
    head = text[: max_chars + 1]
    floor = int(max_chars * 0.6)  # never give away more than 40% of the budget for a clean cut
    ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]?(?=\s)", head) if floor <= m.end() <= max_chars]
    if ends:
        return head[: ends[-1]]
    space = head.rfind(" ", floor, max_chars)
    return head[:space] if space > 0 else head[:max_chars]


def web_seeds(paths: Iterable[Path], cfg: PromptsConfig) -> tuple[list[Seed], int]:
    """Extracts of documents -> (seeds in input order, number of documents too short to use)."""
    seeds: list[Seed] = []
    short = 0
    for doc in read_documents(paths):
        text = doc["text"]
        if len(text.strip()) < cfg.min_seed_chars:
            short += 1
            continue
        topic = None
        if cfg.topic_field:
            value = doc.get("metadata", {}).get(cfg.topic_field)
            topic = str(value).strip() if value not in (None, "") else None
        seeds.append(Seed(doc["id"], "web", extract(text, cfg.extract_chars), doc.get("source", ""), topic=topic))
    return seeds, short


def topic_seeds(path: str | Path) -> list[Seed]:
    """Topics from YAML (a list of strings or of {topic, outline, id}; or {topics: [...]}) or CSV
    (header with `topic`, optionally `outline` and `id`)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise StudyError(f"prompts.topics_path: no file {p}")
    rows: list[dict]
    if p.suffix.lower() == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "topic" not in reader.fieldnames:
                raise StudyError(f"{p}: a CSV of topics needs a header row with a `topic` column (and optionally "
                                 f"`outline`, `id`); got {reader.fieldnames}")
            rows = list(reader)
    else:
        data = read_yaml(p)
        if isinstance(data, dict):
            data = data.get("topics")
        if not isinstance(data, list):
            raise StudyError(f"{p}: expected a list of topics (strings or {{topic, outline, id}}), or `topics: [...]`")
        rows = [{"topic": x} if isinstance(x, str) else x for x in data]
    seeds = []
    for i, row in enumerate(rows):
        topic = str(row.get("topic") or "").strip() if isinstance(row, dict) else ""
        if not topic:
            raise StudyError(f"{p}: topic #{i + 1} has no `topic`")
        outline = row.get("outline")
        if isinstance(outline, list):
            outline = "\n".join(f"- {x}" for x in outline)
        tid = str(row.get("id") or i)
        seeds.append(Seed(f"topic:{tid}", "topic", topic, p.name, topic=topic, outline=(outline or None)))
    if not seeds:
        raise StudyError(f"{p}: no topics")
    return seeds


# ---------------------------------------------------------------------------------------------
# the sampling plan


def _weights(given: dict[str, float], known: list[str], what: str) -> dict[str, float]:
    if not given:
        return {k: 1.0 for k in known}
    unknown = set(given) - set(known)
    if unknown:
        raise StudyError(f"prompts.{what}: unknown {what} {sorted(unknown)}; the templates define: {', '.join(known)}")
    if any(w < 0 for w in given.values()) or not sum(given.values()) > 0:
        raise StudyError(f"prompts.{what}: weights must be >= 0 and not all 0, got {given}")
    return {k: float(given.get(k, 0.0)) for k in known}


def _largest_remainder(n: int, weights: dict[str, float], rank: dict[str, float]) -> dict[str, int]:
    """n split in proportion to weights, exactly; leftover units go to the largest remainders,
    ties to the lowest `rank`."""
    total = sum(weights.values())
    quotas = {k: n * w / total for k, w in weights.items()}
    counts = {k: math.floor(q) for k, q in quotas.items()}
    for k in sorted(weights, key=lambda k: (-(quotas[k] - counts[k]), rank[k]))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def allocate(n: int, templates: Templates, audiences: dict[str, float], styles: dict[str, float],
             seed: int = 0) -> dict[tuple[str, str], int]:
    """Exact prompt counts per (audience, style) cell, summing to n.

    Audience weights give each audience's share of n; style weights split an audience's prompts
    among the styles allowed for it (a style's `exclude_audiences`). Rounding is by largest
    remainder; ties go to styles used least so far, then to a seeded order, so small n still
    spreads over audiences and styles instead of filling the first cells."""
    wa = _weights(audiences, list(templates.audiences), "audiences")
    ws = _weights(styles, list(templates.styles), "styles")
    allowed = {a: [s for s in templates.styles if (a, s) in set(templates.cells()) and ws[s] > 0] for a in wa}
    wa = {a: w for a, w in wa.items() if w > 0 and allowed[a]}
    if not wa:
        raise StudyError("prompts.audiences / prompts.styles leave no allowed (audience, style) pair: "
                         "every style the weights select excludes every audience they select")
    rng = random.Random(f"allocate:{seed}")
    rank = {k: rng.random() for k in [*templates.audiences, *templates.styles]}
    per_audience = _largest_remainder(n, wa, rank)
    used: Counter[str] = Counter()
    out: dict[tuple[str, str], int] = {}
    for a in sorted(wa, key=lambda a: rank[a]):
        quotas = {s: per_audience[a] * ws[s] / sum(ws[x] for x in allowed[a]) for s in allowed[a]}
        counts = {s: math.floor(q) for s, q in quotas.items()}
        left = per_audience[a] - sum(counts.values())
        for s in sorted(quotas, key=lambda s: (-round(quotas[s] - counts[s], 9), used[s] + counts[s], rank[s]))[:left]:
            counts[s] += 1
        for s, k in counts.items():
            used[s] += k
            if k:
                out[(a, s)] = k
    # audiences outer, in template order: a stable, readable plan
    return {c: out[c] for c in templates.cells() if c in out}


def build_prompts(cfg: PromptsConfig, seed: int, seeds: list[Seed], templates: Templates) -> list[dict]:
    """The prompt documents, in id order. Same (cfg, seed, seeds, templates) -> same prompts."""
    if not seeds:
        raise StudyError("no seeds to build prompts from: the ingest output has no document of at least "
                         f"prompts.min_seed_chars={cfg.min_seed_chars} characters (lower it, or ingest more pages)")
    counts = allocate(cfg.n_prompts, templates, cfg.audiences, cfg.styles, seed)
    slots = [cell for cell, k in counts.items() for _ in range(k)]
    rng = random.Random(f"prompts:{seed}")  # str seeds hash with sha512: stable across runs and platforms
    rng.shuffle(slots)
    # every seed is used once before any is used twice; each round in a fresh seeded order
    order: list[int] = []
    while len(order) < len(slots):
        round_ = list(range(len(seeds)))
        rng.shuffle(round_)
        order.extend(round_)
    prompts = []
    for i, (audience, style) in enumerate(slots):
        sd = seeds[order[i]]
        text, template_id, sha = templates.render(audience, style, sd)
        prompts.append({
            "id": f"prompt-{i:06d}",
            "text": text,
            "source": "prompts",
            "metadata": {
                "audience": audience, "style": style, "template_id": template_id, "template_sha": sha,
                "seed_kind": sd.kind, "seed_id": sd.id, "seed_source": sd.source, "topic": sd.topic,
                "seed_chars": len(sd.text),
            },
        })
    return prompts


# ---------------------------------------------------------------------------------------------
# statistics


def _entropy(counts: Counter) -> tuple[float, float]:
    """(Shannon entropy in bits, entropy / log2(number of values)); 1.0 = perfectly even."""
    n = sum(counts.values())
    h = -sum(c / n * math.log2(c / n) for c in counts.values() if c)
    k = len(counts)
    return round(h, 4), round(h / math.log2(k), 4) if k > 1 else 1.0


def length_summary(values: list[int]) -> dict[str, float]:
    """min, p10, p50, p90, max and mean of lengths ({} for none)."""
    if not values:
        return {}
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))]  # noqa: E731
    return {"min": v[0], "p10": pick(0.1), "p50": pick(0.5), "p90": pick(0.9), "max": v[-1],
            "mean": round(sum(v) / len(v), 1)}


def diversity(prompts: list[dict], seeds_used_text: dict[str, str]) -> dict[str, Any]:
    """How varied the prompt set is: counts and evenness per audience / style / cell / seed source,
    seed reuse, and how distinct the seed texts are (distinct word 3-grams / all word 3-grams)."""
    md = [p["metadata"] for p in prompts]
    per = {
        "audience": Counter(m["audience"] for m in md),
        "style": Counter(m["style"] for m in md),
        "cell": Counter(f"{m['audience']}/{m['style']}" for m in md),
        "seed_source": Counter(m["seed_source"] for m in md),
    }
    seed_uses = Counter(m["seed_id"] for m in md)
    grams: list[tuple[str, ...]] = []
    for text in seeds_used_text.values():
        words = text.lower().split()
        grams.extend(zip(words, words[1:], words[2:]))
    out: dict[str, Any] = {f"per_{k}": dict(sorted(v.items())) for k, v in per.items()}
    out["entropy_bits"] = {k: _entropy(v)[0] for k, v in per.items()}
    out["evenness"] = {k: _entropy(v)[1] for k, v in per.items()}
    out["unique_seeds"] = len(seed_uses)
    out["seed_uses_max"] = max(seed_uses.values())
    out["unique_templates"] = len({m["template_id"] for m in md})
    out["seed_distinct_3gram_ratio"] = round(len(set(grams)) / len(grams), 4) if grams else None
    out["prompt_chars"] = length_summary([len(p["text"]) for p in prompts])
    out["seed_chars"] = length_summary([m["seed_chars"] for m in md])
    return out


def prompts_digest(prompts: Iterable[dict]) -> str:
    """sha256 over (id, text) of every prompt: generate checks its saved completions against it."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(p["id"].encode())
        h.update(b"\x00")
        h.update(p["text"].encode())
        h.update(b"\x01")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# the stage


def run(ctx: StageContext) -> dict:
    cfg = ctx.config.prompts
    templates = load_templates(cfg.templates_dir)
    short = 0
    if cfg.seeds == "web":
        ingest = ctx.inputs["ingest"]
        paths = [ctx.run.dir("ingest") / o["path"] for o in ingest["outputs"] if o.get("split") == cfg.split]
        if not paths:
            raise StudyError(f"[prompts] the ingest stage has no `{cfg.split}` shards; set prompts.split="
                             f"{'train' if cfg.split == 'val' else 'val'} or ingest more pages")
        seeds, short = web_seeds(paths, cfg)
    else:
        if not cfg.topics_path:
            raise StudyError("[prompts] prompts.seeds=topics needs prompts.topics_path (a YAML or CSV list of topics), "
                             "e.g. --set prompts.topics_path=configs/topics/textbook_units.yaml")
        seeds = topic_seeds(cfg.topics_path)
    prompts = build_prompts(cfg, ctx.config.seed, seeds, templates)
    writer = ShardedWriter(ctx.dir, "prompts", cfg.shard_prompts)
    for p in prompts:
        writer.write(p)
    shards = writer.close()
    used = {p["metadata"]["seed_id"] for p in prompts}
    stats = diversity(prompts, {s.id: s.text for s in seeds if s.id in used})
    print(f"[prompts] {len(prompts):,} prompts from {stats['unique_seeds']:,} {cfg.seeds} seeds "
          f"({len(seeds):,} available, {short:,} too short); {len(stats['per_cell'])} audience x style cells, "
          f"evenness {stats['evenness']['cell']}")
    return {
        "outputs": [{"path": s["path"], "documents": s["documents"], "chars": s["chars"]} for s in shards],
        "counts": {
            "documents": len(prompts),
            "prompts": len(prompts),
            "seeds_available": len(seeds),
            "seed_documents_too_short": short,
            "plan": {f"{a}/{s}": k for (a, s), k in
                     allocate(cfg.n_prompts, templates, cfg.audiences, cfg.styles, ctx.config.seed).items()},
        },
        "diversity": stats,
        "templates": {
            "dir": str(Path(cfg.templates_dir) if cfg.templates_dir else TEMPLATES_DIR),
            "styles": {s.id: s.version for s in templates.styles.values()},
            "audiences": list(templates.audiences),
            "rules_version": templates.rules_version,
        },
        "prompts_sha256": prompts_digest(prompts),
        # a topics file is named, not hashed, by the config: after editing it, rerun with --force
        "topics_sha256": hashlib.sha256(Path(cfg.topics_path).read_bytes()).hexdigest() if cfg.seeds == "topics" else None,
    }

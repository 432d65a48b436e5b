"""The `mix` stage: the in-memory executor (near-duplicate removal, the default) or the streaming one
(`mix.streaming: true`, for budgets that do not fit in memory). Both follow plan.py."""

from __future__ import annotations

from pipelines.mix import inmemory, streaming
from pipelines.runs.manifest import StageContext


def run(ctx: StageContext) -> dict:
    return (streaming if ctx.config.mix.streaming else inmemory).run(ctx)

"""Stage sizes for end-to-end tests on the embedded world: every stage runs, each in seconds."""

TINY = {"threads": 1, "elicit.drafts": 12, "elicit.batch_size": 24, "prefer.preference_questions": 16,
        "prefer.probe_demos": 3, "align.max_steps": 4, "align.seeds": 2, "align.batch_size": 4, "generate.examples": 24,
        "generate.compare_questions": 6, "generate.compare_preference": 8, "distill.max_steps": 6,
        "distill.batch_size": 8, "distill.ablation_seeds": 2, "evaluate.test_questions": 24,
        "export.parity_prompts": 2, "bench.reference_rounds": 1}


def overrides(name: str, **changes) -> list[str]:
    """`key=value` overrides for a run called `name`: TINY with `changes` (dots as double underscores)."""
    values = {**TINY, **{k.replace("__", "."): v for k, v in changes.items()}}
    return [f"name={name}", *(f"{k}={v}" for k, v in values.items())]

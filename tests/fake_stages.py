"""Stand-in stages for the resume tests: each writes a file and counts its calls."""

CALLS: list[str] = []
FAIL: set[str] = set()


def _stage(name):
    def run(cfg, run_dir):
        CALLS.append(name)
        (run_dir.stage_dir(name) / "out.txt").write_text(f"{name} {cfg.seed}")
        if name in FAIL:
            raise KeyboardInterrupt(f"{name} interrupted")
        return {"metrics": {"value": len(CALLS)}}
    return run


class _Module:
    def __init__(self, name):
        self.run = _stage(name)


import sys  # noqa: E402

for _name in ("first", "second"):
    sys.modules[f"fake_stages.{_name}"] = _Module(_name)

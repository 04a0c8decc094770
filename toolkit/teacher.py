"""The teacher as the stages after `align` load it: the base model with the DPO adapters of
every finished `align` round merged in, in order."""

from __future__ import annotations

from peft import PeftModel

from .config import RunConfig
from .models import load_model
from .rundir import RunDir


def align_folder(run_dir: RunDir, teacher_seed: int = 0):
    """Where one teacher-side seed's DPO adapters live: `align/` for the first seed, `align/seed<k>/` after."""
    folder = run_dir.stage_dir("align")
    return folder / f"seed{teacher_seed}" if teacher_seed else folder


def adapters(run_dir: RunDir, teacher_seed: int = 0) -> list:
    """The DPO adapters of every finished round of one teacher-side seed, in order (none when `align` found
    no pairs)."""
    folder = align_folder(run_dir, teacher_seed)
    found = [folder / "adapter"] + sorted(folder.glob("round*/adapter"), key=lambda p: int(p.parent.name[5:]))
    return [p for p in found if (p / "adapter_config.json").exists()]


def load_teacher(cfg: RunConfig, run_dir: RunDir | None = None, spec=None, stack: list | None = None,
                 teacher_seed: int = 0):
    """The teacher with the given (default: every finished round's of `teacher_seed`) adapters merged in, in order."""
    teacher = load_model(spec or cfg.teacher, cfg.device)
    for adapter in stack if stack is not None else adapters(run_dir, teacher_seed):
        if not (adapter / "adapter_model.safetensors").is_file():  # peft would fall back to a pickled .bin
            from .errors import ArtifactError

            raise ArtifactError(adapter, "adapter_model.safetensors", "missing: rerun `align` (pickled adapters "
                                                                     "are never loaded)")
        teacher.model = PeftModel.from_pretrained(teacher.model, str(adapter)).merge_and_unload()
    teacher.model.eval()
    return teacher

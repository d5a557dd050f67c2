"""Experiments driven through the public API: the first-layer study and its report."""
from .first_layer import StudySchedule, Variant, ablation_variants, all_variants, headline_variants, plan, run_study
from .report import summarize, write_report

__all__ = ["StudySchedule", "Variant", "ablation_variants", "all_variants", "headline_variants", "plan", "run_study",
           "summarize", "write_report"]

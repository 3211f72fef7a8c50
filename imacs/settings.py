"""The settings of an analysis, gathered in one frozen object."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .attribution import AttributionSettings, Preprocess
from .comparison import ComparisonSettings
from .patches import PatchSettings


@dataclass(frozen=True)
class AnalysisSettings:
    """Every setting of an analysis; the defaults are the CLI's defaults."""

    preprocess: Preprocess = field(default_factory=Preprocess)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    patches: PatchSettings = field(default_factory=PatchSettings)
    comparison: ComparisonSettings = field(default_factory=ComparisonSettings)
    n_clusters: int | None = None
    projection: str = "umap"
    embedding_dims: int = 32
    seed: int = 0
    strict: bool = False

    def result_fields(self) -> dict[str, object]:
        """Settings that change the run's content (not batch sizes, device or strictness)."""
        d = asdict(self)
        for k in ("batch_size", "internal_batch_size", "device"):
            d["attribution"].pop(k)
        d.pop("strict")
        return d

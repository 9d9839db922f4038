"""The explanation defaults: one `ExplainSettings` that the Explainer, the dashboard's pages,
scripts/explain.py and the benchmark all read (`EXPLAIN_DEFAULTS`), and the convergence rule of
integrated gradients. Why these values: docs/BENCHMARKS.md ("Explanations")."""
from __future__ import annotations

from dataclasses import dataclass

METHODS = ("attention", "relevancy", "text_ig", "image_ig", "occlusion", "modality_share", "deletion")
INTEGRATION_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


@dataclass(frozen=True)
class ExplainSettings:
    """How explanations are computed when the caller does not say otherwise.

    Integrated gradients start with `n_steps` gradient evaluations (`n_steps / nodes_per_segment`
    equal segments of the path, each with `nodes_per_segment` quadrature nodes) and, while the
    completeness delta is not small enough (`converged`), halve the segments whose own delta is
    largest, up to `max_steps` evaluations (clara.explain.attributions.integrate_path).
    """
    methods: tuple[str, ...] = ("attention", "relevancy", "text_ig", "image_ig", "occlusion", "modality_share")
    n_steps: int = 16  # gradient evaluations of the first round
    max_steps: int = 256  # evaluations at most
    nodes_per_segment: int = 4
    path_grading: float = 4.0  # each initial segment this much longer than the one before (1: equal)
    integration: str = "gausslegendre"  # Captum's quadrature within each segment
    # Converged when |delta| <= max_relative_delta * |f(input) - f(baseline)|, f the target-class probability
    # (the attributed output) ...
    max_relative_delta: float = 0.05
    # ... or when |delta| <= delta_floor (half a percentage point): 5 % of a change of f under 0.1 is
    # finer than bf16 arithmetic resolves f (docs/BENCHMARKS.md).
    delta_floor: float = 5e-3
    internal_batch_size: int | None = None  # IG steps per forward/backward pass; None: by device (attributions.py)
    deletion_points: int = 50
    deletion_random_orders: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.nodes_per_segment <= self.n_steps <= self.max_steps:
            raise ValueError(f"IG steps: need 2 <= nodes_per_segment <= n_steps <= max_steps, got "
                             f"{self.nodes_per_segment}, {self.n_steps}, {self.max_steps}")
        if self.integration not in INTEGRATION_METHODS:
            raise ValueError(f"integration={self.integration!r} is not one of: {', '.join(INTEGRATION_METHODS)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown explanation method(s) {unknown}; choose from: {', '.join(METHODS)}")

    def converged(self, delta: float, output_change: float) -> bool:
        """The completeness rule: |delta| small against the change of the attributed output."""
        return abs(delta) <= max(self.max_relative_delta * abs(output_change), self.delta_floor)


EXPLAIN_DEFAULTS = ExplainSettings()

"""KL coefficient controllers (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences")."""

from __future__ import annotations

from typing import Any


class FixedKLController:
    """A constant KL coefficient: TRL's `kl_coef`."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, num_episodes: int) -> None:
        """No-op: the coefficient never moves."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Proportional controller: ``beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon)``.

    ``current_kl`` is the mean per-sequence KL (nats) of the last update and ``n`` the number of
    episodes it trained on, so the coefficient rises while the policy drifts past the target and
    decays while it stays below.
    """

    def __init__(self, kl_coef: float, target: float, horizon: float, max_error: float = 0.2):
        super().__init__(kl_coef)
        self.target = target
        self.horizon = horizon
        self.max_error = max_error

    def update(self, current_kl: float, num_episodes: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -self.max_error), self.max_error)
        self.value *= 1.0 + error * num_episodes / self.horizon


def make_kl_controller(kind: str, kl_coef: float, target: float, horizon: float) -> FixedKLController:
    if kind == "fixed":
        return FixedKLController(kl_coef)
    if kind == "adaptive":
        return AdaptiveKLController(kl_coef, target, horizon)
    raise ValueError(f"`kl_controller` must be 'fixed' or 'adaptive'; got {kind!r}.")

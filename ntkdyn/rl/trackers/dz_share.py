"""The dz share: how much of an update's logit change at the probe contexts comes through the gradient part
Δz_G and the representation part Δz_R (spec §2: Δz = Δz_R + Δz_G, split by dynamics.split_update:
Δz_R = ΔW h + Δb, Δz_G = W · JVP_ψ(h; δψ)); metrics.dz_share gives ‖Δz_G‖/‖Δz‖ and ‖Δz_R‖/‖Δz‖. Logged at each
stage's first step and every `every` stage steps as dz_share/gradient and dz_share/representation."""
from __future__ import annotations

import jax

from ... import metrics as M
from ..sharding import to_host

__all__ = ["DzShare"]

_dz_share = jax.jit(M.dz_share)


class DzShare:
    name = "dz_share"

    def __init__(self, lm, probes, every: int):
        self.lm, self.ids, self.pos, self.every = lm, probes.ids, probes.pos, int(every)

    def start(self, params, resumed: bool, memo: dict | None = None) -> dict:
        return {}

    def reads_before(self, stage, stage_step: int) -> bool:
        return stage_step == 1 or stage_step % self.every == 0

    def after_update(self, u) -> dict:
        if not self.reads_before(u.stage, u.stage_step):
            return {}
        from ...dynamics import split_update

        d = split_update(self.lm, u.before, u.after, self.ids, self.pos)
        s = to_host(_dz_share(d["dz_gradient"], d["dz_representation"]))
        return {"dz_share/gradient": float(s["gradient"]), "dz_share/representation": float(s["representation"])}

"""Tests for the Hutchinson estimators (ntkdyn.ntk.methods.jacobian_probes and structured_probes): probe estimates
of tr G, ‖G‖_F² (and of the tied X) against the exact kernels of the GPT-2 family (tied head, learned positions), in
float64, by both methods (test_ntk_structured.py checks that the two give the same numbers on other families)."""
from __future__ import annotations

import numpy as np
import pytest

import ntk_cases
from ntk_cases import CTX, IDS, x64  # noqa: F401 (x64: a fixture)
from ntkdyn import ntk


def _hutchinson_job(gpt2):
    r = gpt2.result()  # GPT-2: tied (cross term) and learned positions
    ks = [ntk.decompose(r["lm"], IDS, CTX, params=r["params"], output="hutchinson", num_probes=256, seed=1,
                        method=m) for m in ("structured", "jacobian")]
    return r["full"], ks


@pytest.fixture(scope="module")
def results(x64, tmp_path_factory):  # noqa: F811
    yield ntk_cases.start(tmp_path_factory, ["gpt2"], {"hutchinson": _hutchinson_job})
    ntk_cases.finish()


def test_hutchinson_within_standard_errors(results):
    """Probe estimates of tr G, ‖G‖_F² (and of the tied X) agree with the exact values within 3 standard errors.
    (Deterministic: fixed seed. The probes are shared by all pairs, so the pairs' errors are correlated.)"""
    exact, ks = results["hutchinson"]()
    for k in ks:
        _within_standard_errors(exact, k)


def _within_standard_errors(exact, k):
    assert k.output == "hutchinson" and k.gradient.num_probes == 256
    assert k.gradient.trace.shape == (len(CTX), len(CTX))
    np.testing.assert_allclose(k.representation, exact["representation"], rtol=1e-12)
    for est, K in ((k.gradient, exact["gradient"]), (k.cross, exact["cross"])):
        for val, se, ref in ((est.trace, est.trace_se, np.trace(K, axis1=2, axis2=3)),
                             (est.fro2, est.fro2_se, np.sum(np.asarray(K) ** 2, axis=(2, 3)))):
            val, se = np.asarray(val), np.asarray(se)
            assert np.all(se > 0)
            assert np.all(np.abs(val - ref) <= 3 * se), (np.abs(val - ref) / se)

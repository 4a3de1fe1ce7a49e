"""The native sampler's fast draw (plugins/ort/sampler.cc `sample_row`): vector float64 exps and block sums, a
token accepted only when the target clears its neighbours by the error bound, else the reference computation.
Its token must be the reference computation's (`wn_sample_exact`: libm exp, one sequential cumsum) for every
row, and so reference_model.sampling's; these tests check the bound it relies on, the agreement on many rows,
and that targets on the boundaries take the exact path.

Speed lives in `wn-export bench` (the native loop's rows)."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

from reference_model.sampling import inverse_cdf
from wn_export.backends.onnxruntime import native

EXP_BOUND = 2.0**-44  # kExpError in sampler.cc: the bound the acceptance test assumes
_p, _i64, _f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double


@pytest.fixture(scope="module")
def lib():
    so = ctypes.CDLL(str(native.library()))
    for name in ("wn_sample", "wn_sample_exact"):
        fn = getattr(so, name)
        fn.restype = ctypes.c_int
        fn.argtypes = [_p, _i64, _i64, _p, _f64, _p]
    so.wn_sample_exp.restype = None
    so.wn_sample_exp.argtypes = [_p, _i64, _p]
    so.wn_sample_exact_rows.restype = _i64
    return so


def _tokens(fn, logits: np.ndarray, u: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.ascontiguousarray(logits, np.float32)
    u = np.ascontiguousarray(u, np.float64)
    out = np.empty(len(logits), np.int64)
    assert fn(logits.ctypes.data, len(logits), logits.shape[1], u.ctypes.data, temperature, out.ctypes.data) == 0
    return out


def _vector_exp(lib, x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float64)
    out = np.empty_like(x)
    lib.wn_sample_exp(x.ctypes.data, len(x), out.ctypes.data)
    return out


def test_vector_exp_is_within_its_bound_of_libm(lib):
    rng = np.random.default_rng(0)
    # the whole range the draw uses (x = z − max z ≤ 0, flushed to 0 below −708), densely, and its edges
    x = np.concatenate([np.linspace(-708.0, 0.0, 400_001), -rng.random(300_000) * 708, -rng.random(100_000) * 1e-3,
                        -np.ldexp(1.0, -np.arange(1, 1075)), [0.0, -0.0, -0.34657359027997264, -0.3465735902799727]])
    got = _vector_exp(lib, x)
    want = np.array([math.exp(v) for v in x])
    rel = np.abs(got - want) / want
    assert rel.max() < EXP_BOUND / 16, rel.max()  # measured < 2⁻⁵¹; the bound keeps a factor ≥ 16 in hand
    assert (got[x == 0] == 1.0).all()
    tiny = np.array([-708.5, -745.2, -1e4, -np.inf])
    assert _vector_exp(lib, tiny).tolist() == [0.0] * 4  # below −708: 0 (libm's values there are < 2⁻¹⁰²¹)


@pytest.mark.parametrize("classes", [1, 3, 17, 256, 1000])
def test_fast_draw_is_the_exact_draw_on_many_rows(lib, classes):
    rng = np.random.default_rng(classes)
    rows = 400_000 // classes + 200
    for temperature in (1.0, 0.35, 1.7):
        scale = rng.choice([0.01, 1.0, 8.0, 60.0, 2000.0], rows)[:, None]  # flat rows to rows that underflow
        logits = (rng.standard_normal((rows, classes)) * scale).astype(np.float32)
        u = rng.random(rows)
        u[:50] = 0.0
        u[50:100] = 1.0 - 2.0**-53
        fast = _tokens(lib.wn_sample, logits, u, temperature)
        assert np.array_equal(fast, _tokens(lib.wn_sample_exact, logits, u, temperature))
        some = slice(0, 5000)
        assert np.array_equal(fast[some], inverse_cdf(logits[some], u[some], temperature))


def test_targets_on_the_boundaries_take_the_exact_path(lib):
    """u placed so that u·c_{Q−1} lands on (or within a few ulps of) a cumulative sum: the fast path cannot
    decide those and must hand them to the reference computation, whose token it then returns."""
    rng = np.random.default_rng(7)
    Q = 256
    rows, us, want = [], [], []
    for _ in range(60):
        logits = (rng.standard_normal(Q) * rng.uniform(0.5, 5)).astype(np.float32)
        z = logits.astype(np.float64)
        m = z.max()
        c, s = [], 0.0
        for v in z:  # the reference computation in Python floats: libm exp, sequential sum
            s += math.exp(v - m)
            c.append(s)
        for i in rng.choice(Q - 1, 4, replace=False):
            for u in (c[i] / c[-1], np.nextafter(c[i] / c[-1], 0), np.nextafter(c[i] / c[-1], 1)):
                t = u * c[-1]
                rows.append(logits)
                us.append(u)
                want.append(min(sum(ci <= t for ci in c), Q - 1))
    logits, u = np.array(rows), np.array(us)
    before = lib.wn_sample_exact_rows()
    assert _tokens(lib.wn_sample, logits, u, 1.0).tolist() == want
    assert lib.wn_sample_exact_rows() - before == len(want)  # every one of them went the exact way
    assert len(set(want)) > 100  # boundaries all over the rows, not one corner case

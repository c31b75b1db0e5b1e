"""Temporal ensembling of overlapping chunks (policy/temporal_ensemble.py)."""
import numpy as np
import pytest

from vla_bringup.policy.temporal_ensemble import TemporalEnsemble


def ramp(start: float, rows: int = 4) -> np.ndarray:
    return np.column_stack([start + np.arange(rows), np.zeros(rows)])


def test_first_chunk_passes_and_later_ones_average_by_time():
    ensemble = TemporalEnsemble()
    first = ramp(0.0)  # rows due at 0.1, 0.2, 0.3, 0.4
    np.testing.assert_allclose(ensemble(0.0, 0.1, first), first)
    second = ramp(10.0)  # rows due at 0.2 .. 0.5: the first three overlap the first chunk
    blended = ensemble(0.1, 0.1, second)
    np.testing.assert_allclose(blended[:3, 0], (second[:3, 0] + first[1:, 0]) / 2)
    assert blended[3, 0] == pytest.approx(second[3, 0])  # nobody else predicted 0.5 s


def test_rows_between_the_old_rows_are_interpolated():
    ensemble = TemporalEnsemble()
    ensemble(0.0, 0.1, ramp(0.0))
    # Stamped 0.05 s later: its first row (0.15 s) falls halfway between old rows 0 and 1.
    blended = ensemble(0.05, 0.1, ramp(0.0))
    assert blended[0, 0] == pytest.approx((0.0 + 0.5) / 2)


def test_a_grasp_that_every_chunk_postpones_still_comes():
    """Each chunk says: fingers open for 3 rows, closed after. Alone, the first row never closes;
    ensembled, the predictions made earlier for "now" close the fingers."""
    ensemble = TemporalEnsemble()
    chunk = np.column_stack([np.zeros(16), np.r_[np.full(3, 0.04), np.zeros(13)]])
    firsts = [ensemble(0.1 * step, 0.1, chunk)[0, 1] for step in range(12)]
    assert firsts[0] == pytest.approx(0.04)
    assert firsts[-1] < 0.01  # mostly closed after 1.2 s


def test_decay_favours_the_newest_and_bad_input_is_refused():
    ensemble = TemporalEnsemble(decay=50.0)
    ensemble(0.0, 0.1, ramp(0.0))
    np.testing.assert_allclose(ensemble(0.1, 0.1, ramp(10.0)), ramp(10.0), atol=1e-6)
    with pytest.raises(ValueError, match="finite"):
        ensemble(0.2, 0.1, np.full((4, 2), np.nan))
    with pytest.raises(ValueError, match="decay"):
        TemporalEnsemble(decay=-1.0)


def test_time_going_backwards_or_a_reset_forgets_the_old_chunks():
    ensemble = TemporalEnsemble()
    ensemble(5.0, 0.1, ramp(100.0))
    np.testing.assert_allclose(ensemble(1.0, 0.1, ramp(0.0)), ramp(0.0))  # a new episode
    ensemble.reset()
    np.testing.assert_allclose(ensemble(1.1, 0.1, ramp(7.0)), ramp(7.0))

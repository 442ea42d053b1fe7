"""The long axis of a lesion: its length, its slice, and end points that draw a line of that length."""

from __future__ import annotations

import numpy as np
import pytest

from hounsfield_operators.lesion_measurement import long_axis, longest_axial_diameter_mm, measure_lesions

Point = tuple[float, float]


def _drawn_length_mm(start_rc: Point, end_rc: Point, spacing_yx: Point) -> float:
    return float(np.hypot((end_rc[0] - start_rc[0]) * spacing_yx[0], (end_rc[1] - start_rc[1]) * spacing_yx[1]))


def test_rectangle_long_axis_runs_corner_to_corner_on_its_slice() -> None:
    mask = np.zeros((3, 20, 20), dtype=bool)
    mask[1, 2:5, 3:7] = True  # rows 2-4, columns 3-6
    spacing = (5.0, 2.0, 1.0)
    axis = long_axis(mask, spacing)
    assert axis is not None
    assert axis.slice_index == 1
    assert axis.length_mm == pytest.approx(float(np.hypot(2 * 2.0, 3 * 1.0)) + 1.5)
    assert _drawn_length_mm(axis.start_rc, axis.end_rc, spacing[1:]) == pytest.approx(axis.length_mm)
    # The chord joins opposite corner pixels, (2, 3)-(4, 6) or (2, 6)-(4, 3), moved outwards.
    ends = sorted([axis.start_rc, axis.end_rc])
    assert ends[0][0] < 2 and ends[1][0] > 4
    assert {round(ends[0][1]), round(ends[1][1])} in ({3, 6}, {2, 7})


def test_the_largest_slice_wins_and_a_lone_pixel_measures_one_pixel() -> None:
    mask = np.zeros((4, 30, 30), dtype=bool)
    mask[0, 5, 5] = True
    mask[2, 10:20, 10:12] = True
    axis = long_axis(mask, (2.5, 0.8, 0.8))
    assert axis is not None and axis.slice_index == 2
    lone = long_axis(mask[:1], (2.5, 0.8, 0.8))
    assert lone is not None and lone.length_mm == pytest.approx(0.8)
    assert _drawn_length_mm(lone.start_rc, lone.end_rc, (0.8, 0.8)) == pytest.approx(0.8)
    assert long_axis(np.zeros_like(mask), (1.0, 1.0, 1.0)) is None
    assert longest_axial_diameter_mm(mask, (2.5, 0.8, 0.8)) == (pytest.approx(axis.length_mm), 2)


def test_a_long_thin_lesion_uses_its_ends() -> None:
    """Over 256 boundary pixels in a line: the convex hull is degenerate, the ends are still found."""
    mask = np.zeros((1, 4, 400), dtype=bool)
    mask[0, 1, 20:380] = True
    axis = long_axis(mask, (1.0, 0.5, 0.5))
    assert axis is not None
    assert axis.length_mm == pytest.approx(359 * 0.5 + 0.5)
    assert sorted((axis.start_rc[1], axis.end_rc[1])) == [pytest.approx(19.5), pytest.approx(379.5)]  # edge to edge


def test_measured_lesions_carry_their_long_axis() -> None:
    mask = np.zeros((5, 40, 40), dtype=bool)
    yy, xx = np.mgrid[:40, :40]
    mask[2] = (yy - 20) ** 2 / 64 + (xx - 15) ** 2 / 16 <= 1  # taller than wide: the axis is vertical
    lesions = measure_lesions(mask, np.full(mask.shape, 40.0), (3.0, 1.0, 1.0)).lesions
    assert len(lesions) == 1
    (start, end), lesion = lesions[0].long_axis_rc, lesions[0]
    assert lesion.longest_axial_diameter_slice == 2
    assert abs(end[0] - start[0]) > abs(end[1] - start[1])
    assert _drawn_length_mm(start, end, (1.0, 1.0)) == pytest.approx(lesion.longest_axial_diameter_mm)

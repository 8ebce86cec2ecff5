"""orders/monitoring/charts.py: points in, SVG out (a pure function)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orders.monitoring.charts import Line, line_chart, nice_ceiling, segments, short_bytes

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _points(values):
    return [(T0 + timedelta(minutes=i), v) for i, v in enumerate(values)]


@pytest.mark.parametrize(
    "value, top",
    [(0, 1), (0.3, 0.5), (1, 1), (7, 10), (10, 10), (11, 20), (1234, 2000), (5e9, 5e9)],
)
def test_the_axis_ends_at_a_round_number(value, top):
    assert nice_ceiling(value) == pytest.approx(top)


@pytest.mark.parametrize(
    "value, label",
    [(0, "0"), (512, "512"), (1536, "1.5K"), (500_000_000, "477M"), (3 * 2**30, "3.0G")],
)
def test_byte_axis_labels_are_short(value, label):
    assert short_bytes(value) == label


def test_an_unknown_value_breaks_the_line():
    assert segments(_points([1, 2, None, 3, None, None, 4, 5])) == [
        _points([1, 2]),
        [(T0 + timedelta(minutes=3), 3)],
        [(T0 + timedelta(minutes=6), 4), (T0 + timedelta(minutes=7), 5)],
    ]


def test_the_chart_scales_points_into_the_plot_and_labels_the_axes():
    svg = line_chart(
        title="Messages queued",
        lines=[Line("queued", _points([0, 50, 100]))],
        start=T0,
        end=T0 + timedelta(minutes=2),
        chart_id="chart-x",
    )
    assert svg.startswith('<svg class="chart" viewBox="0 0 480 220" width="100%"')
    assert "max-width:640px" in svg
    (points,) = re.findall(r'<polyline [^>]*points="([^"]+)"', svg)
    # x from the left edge of the plot (66) to the right (470); y from the bottom (194) to the top (30).
    assert points == "66.0,194.0 268.0,112.0 470.0,30.0"
    for label in (">0<", ">50<", ">100<", ">12:00<", ">12:01<", ">12:02<", "Messages queued"):
        assert label in svg


def test_a_single_known_point_is_a_dot_and_labels_are_escaped():
    svg = line_chart(
        title="<b>&",
        lines=[Line("a<script>", _points([None, 3, None]))],
        start=T0,
        end=T0 + timedelta(minutes=2),
    )
    assert "<circle " in svg and "<polyline" not in svg
    assert "<script>" not in svg and "&lt;b&gt;&amp;" in svg


@given(st.lists(st.one_of(st.none(), st.floats(0, 1e12)), max_size=50))
def test_every_point_lands_inside_the_view_box(values):
    svg = line_chart(
        title="t", lines=[Line("v", _points(values))], start=T0, end=T0 + timedelta(minutes=49)
    )
    coords = re.findall(r'points="([^"]+)"', svg)
    for pair in " ".join(coords).split():
        x, y = map(float, pair.split(","))
        assert 66 <= x <= 470 and 30 <= y <= 194
    assert svg.count("<polyline") + svg.count("<circle") == len(segments(_points(values)))

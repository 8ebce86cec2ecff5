"""What the order page shows of an instance's metrics: the graphs and the latest values.

Used by orders/web/monitoring.py for the page (orders/_metrics.html) and for the fragment its script
fetches every 15 s (orders:metrics). Reads orders/monitoring/metrics.py, draws with
orders/monitoring/charts.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from orders.models import Instance, MetricSample, Order
from orders.monitoring import charts, metrics
from orders.monitoring.alarms import human_bytes

TIME_FORMAT = {"1h": "%H:%M", "24h": "%H:%M", "7d": "%d %b"}
# No sample for this long (hosts sample every 30 s): the page says the values are not current.
STALE_AFTER = timedelta(minutes=3)


def shows_metrics(order: Order, instance: Instance | None) -> bool:
    """The section is there for a server that has been ready, until the order ends."""
    return instance is not None and instance.ran_once and order.status not in Order.ENDED


def range_from(value: str | None) -> str:
    """The ?range= GET parameter: one of metrics.RANGES, else the default."""
    return value if value in metrics.RANGES else metrics.DEFAULT_RANGE


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}/s"


def _bytes(value: float | None) -> str:
    return "-" if value is None else human_bytes(value)


def _uptime(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    days, rest = divmod(seconds, 86400)
    return (f"{days} d " if days else "") + f"{rest // 3600} h {rest % 3600 // 60} min"


def latest_values(sample: MetricSample) -> list[tuple[str, str, str]]:
    """(dom id, label, text) of the latest sample, readable without JavaScript."""
    return [
        ("messages-queued", "Messages queued", _count(sample.messages_queued)),
        ("messages-ready", "Ready", _count(sample.messages_ready)),
        ("messages-unacked", "Unacknowledged", _count(sample.messages_unacked)),
        ("publish-rate", "Publish rate", _rate(sample.publish_rate)),
        ("deliver-rate", "Deliver rate", _rate(sample.deliver_rate)),
        ("ack-rate", "Ack rate", _rate(sample.ack_rate)),
        ("connections", "Connections", _count(sample.connections)),
        ("channels", "Channels", _count(sample.channels)),
        ("consumers", "Consumers", _count(sample.consumers)),
        ("queues", "Queues", _count(sample.queues)),
        (
            "memory",
            "Memory used / limit",
            f"{_bytes(sample.mem_used)} / {_bytes(sample.mem_limit)}",
        ),
        (
            "disk",
            "Disk free / limit",
            f"{_bytes(sample.disk_free)} / {_bytes(sample.disk_free_limit)}",
        ),
        ("uptime", "RabbitMQ uptime", _uptime(sample.uptime_s)),
        ("cpu", "CPU (host)", f"{sample.cpu_percent:.1f} %"),
    ]


def _graph(
    points: list[metrics.Point],
    title: str,
    series: list[tuple[str, str, bool]],
    fmt: Callable[[float], str],
    range_key: str,
    now: datetime,
    chart_id: str,
) -> str:
    lines = [
        charts.Line(label, [(p.at, p.values.get(name)) for p in points], dashed)
        for label, name, dashed in series
    ]
    return charts.line_chart(
        title=title,
        lines=lines,
        start=now - metrics.RANGES[range_key],
        end=now,
        fmt=fmt,
        time_fmt=TIME_FORMAT[range_key],
        chart_id=chart_id,
    )


def metrics_context(
    instance: Instance, range_key: str, now: datetime | None = None
) -> dict[str, Any]:
    """Graphs (SVG), latest values and the not-answering notice for orders/_metrics.html."""
    now = now or timezone.now()
    latest = metrics.latest_sample(instance)
    points = metrics.graph_points(instance, range_key, now) if latest else []
    down_since = metrics.unreachable_since(instance, latest)
    # The 7-day graph is drawn from 5-minute averages: there is no "ready" line there.
    queued = [("queued (ready + unacked)", "messages_queued", False)]
    if range_key != "7d":
        queued.append(("ready", "messages_ready", True))

    def count_fmt(v: float) -> str:
        return f"{v:,.0f}" if v >= 10 or v == 0 else f"{v:g}"

    graphs = (
        [
            _graph(points, "Messages queued", queued, count_fmt, range_key, now, "chart-queued"),
            _graph(
                points,
                "Message rates (per second)",
                [
                    ("publish", "publish_rate", False),
                    ("deliver", "deliver_rate", False),
                    ("ack", "ack_rate", True),
                ],
                lambda v: f"{v:g}",
                range_key,
                now,
                "chart-rates",
            ),
            _graph(
                points,
                "Connections",
                [("connections", "connections", False)],
                count_fmt,
                range_key,
                now,
                "chart-connections",
            ),
            _graph(
                points,
                "Memory used vs limit",
                [("used", "mem_used", False), ("limit", "mem_limit", True)],
                charts.short_bytes,
                range_key,
                now,
                "chart-memory",
            ),
            _graph(
                points,
                "Disk free vs limit",
                [("free", "disk_free", False), ("limit", "disk_free_limit", True)],
                charts.short_bytes,
                range_key,
                now,
                "chart-disk",
            ),
        ]
        if latest
        else []
    )
    return {
        "metrics_range": range_key,
        "metrics_ranges": list(metrics.RANGES),
        "latest_sample": latest,
        "latest_values": latest_values(latest) if latest else [],
        "unreachable_since": down_since,
        # The host stopped reporting (host down, or cut off from the broker): say so, with when.
        "stale_since": latest.at if latest and now - latest.at > STALE_AFTER else None,
        "graphs": graphs,
    }
